"""Layer outputs summarised inside the step's graph by the summary op: the same numbers as the kernel path,
and the same trace on a real Keras model with BatchNorm."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from repro_audit.probes.common.native_summary import kernel
from repro_audit.probes.tf import summary_op as op_module
from repro_audit.probes.tf.repeated_unpack import unpack
from repro_audit.probes.tf.tensors import hash_only, pack
from tests.helpers import broken_compiler

pytestmark = pytest.mark.tensorflow
tf = pytest.importorskip("tensorflow")


@pytest.fixture
def summary_op() -> Any:
    """The op, built at test time (in the session's cache folder, not at collection)."""
    if kernel() is None or op_module.summary_op() is None:
        pytest.skip("no C compiler for the native kernel and the op")
    return op_module.summary_op()


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {
        "whole": rng.standard_normal((128, 128)).astype(np.float32),  # 64 KiB: hashed whole
        "chunked": rng.standard_normal((4, 64, 64, 16)).astype(np.float32),  # 1 MiB: in 64 KiB chunks
        "double": rng.standard_normal((200, 100)),
        "vector": rng.standard_normal(70_001).astype(np.float32),  # the shape prefix of a 1-d tensor
        "nan": rng.standard_normal((8, 4096)).astype(np.float32),
        "infinities": rng.standard_normal((8, 4096)).astype(np.float32),
        "both_infinities": rng.standard_normal((8, 4096)).astype(np.float32),
    }
    arrays["nan"][3, 5:9] = np.nan
    arrays["nan"][0, 0] = np.inf
    arrays["infinities"][1, 1] = -np.inf
    arrays["both_infinities"][2, 2], arrays["both_infinities"][6, 6] = np.inf, -np.inf
    return {f"module_outputs/{name}#0": array for name, array in arrays.items()}


def test_the_op_gives_the_kernel_paths_summaries_number_for_number(summary_op: Any) -> None:
    arrays = _arrays()
    layouts: list[Any] = []

    @tf.function(autograph=False)
    def step(tensors: dict[str, Any]) -> Any:
        named = [(key, tf.identity(tensor)) for key, tensor in tensors.items()]
        assert all(op_module.summarised_in_graph(tensor) for _, tensor in named)
        layout, packed = pack(named, hash_only=hash_only, separate_state=True)
        layouts.append(layout)
        return packed, tf.stack([summary_op(tensor) for _, tensor in named])

    packed, results = step({key: tf.constant(array) for key, array in arrays.items()})
    expected, _ = unpack(layouts[0], packed, keep_values=True)
    found = op_module.summaries_of(list(arrays), [a.dtype.name for a in arrays.values()],
                                   [a.shape for a in arrays.values()], results.numpy())
    assert list(found) == list(arrays)
    for key in arrays:
        assert set(found[key]) == set(expected[key]), key
        for field, value in expected[key].items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(found[key][field]), (key, field)
            else:
                assert found[key][field] == value, (key, field, found[key][field], value)
    assert found["module_outputs/nan#0"]["nan"] == 4 and found["module_outputs/both_infinities#0"]["inf"] == 2


def test_small_half_scalar_and_unknown_shape_outputs_stay_on_the_kernel_path() -> None:
    assert op_module.summarised_in_graph(tf.zeros((128, 128)))
    assert not op_module.summarised_in_graph(tf.zeros((127, 128)))  # numpy's rows give small ones theirs
    assert not op_module.summarised_in_graph(tf.zeros((256, 256), tf.float16))
    assert not op_module.summarised_in_graph(tf.zeros((256, 256), tf.int32))
    assert not op_module.summarised_in_graph(tf.zeros(()))
    unknown = tf.function(lambda x: op_module.summarised_in_graph(x) and None, autograph=False)
    unknown.get_concrete_function(tf.TensorSpec((None, 256, 256)))  # traced: asserts nothing, must not fail
    seen: list[bool] = []
    tf.function(lambda x: seen.append(op_module.summarised_in_graph(x)), autograph=False).get_concrete_function(
        tf.TensorSpec((None, 256, 256)))
    assert seen == [False]


@pytest.mark.parametrize("variable", ["REPRO_AUDIT_TF_SUMMARY_OP", "REPRO_AUDIT_NATIVE"])
def test_the_op_is_turned_off_by_its_variable_and_the_kernels(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(op_module, "_loaded", [])
    monkeypatch.setenv(variable, "0")
    assert op_module.summary_op() is None and not op_module.loaded()


def test_a_failed_build_leaves_the_outputs_returned_and_is_not_retried(tmp_path: Path) -> None:
    compiler, log = broken_compiler(tmp_path, "error: no TF headers")
    assert op_module._load(tmp_path / "cache", str(compiler)) is None
    tries = len(log.read_text().splitlines())
    assert tries >= 1 and "no TF headers" in next((tmp_path / "cache").glob("*/failed.txt")).read_text()
    assert op_module._load(tmp_path / "cache", str(compiler)) is None
    assert len(log.read_text().splitlines()) == tries  # remembered, not run again

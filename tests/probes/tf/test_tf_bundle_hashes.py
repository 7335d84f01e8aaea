"""Hashes and large-tensor statistics of a TF step from the native kernel, and the same without it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import repro_audit.probes.tf.tensors as tf_tensors
from repro_audit.audit.trace import Trace
from repro_audit.probes.common.hashing import hash_array, summarize_array
from repro_audit.probes.common.native_summary import kernel
from repro_audit.probes.tf import bundle_hashes
from repro_audit.probes.tf.tensors import hash_raw

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")
needs_kernel = pytest.mark.skipif(kernel() is None, reason="no C compiler for the native kernel")


@needs_kernel
def test_kernel_hashes_and_statistics_match_the_python_ones() -> None:
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(40_000).astype(np.float32).reshape(200, 200),  # past 64 KiB: chunked
              rng.standard_normal(7).astype(np.float64), np.zeros((3, 5), np.float32),
              np.array(2.5, np.float32), rng.standard_normal(50_000).astype(np.float16)]
    arrays[0][0, :17] = 0.0
    wanted = [True, True, True, False, True]
    digests, reduced = bundle_hashes.hashes_and_stats(arrays, wanted)
    for array, digest in zip(arrays, digests):
        assert digest == hash_raw(array.dtype.str, array.shape, array.reshape(-1).view(np.uint8))
    assert digests[2] == hash_array(arrays[2])
    assert reduced[3] is None and reduced[4] is None  # not wanted; a half type numpy reduces
    for array, found in zip(arrays[:3], reduced[:3]):
        assert found is not None
        low, high, _, sum_of_squares = found.stats
        expected = summarize_array(array)
        assert (low, high) == (expected["min"], expected["max"])
        assert found.counts == (expected["zeros"], 0, 0)
        assert math.isclose(math.sqrt(sum_of_squares), expected["norm"], rel_tol=1e-6)
    assert reduced[0] is not None and reduced[0].counts[0] == 17


@needs_kernel
def test_kernel_counts_nan_and_inf_for_numpy_to_describe() -> None:
    array = np.arange(30_000, dtype=np.float32)
    array[[5, 9]] = np.nan
    array[11] = -np.inf
    _, [found] = bundle_hashes.hashes_and_stats([array], [True])
    assert found is not None and found.counts[1:] == (2, 1)


def test_a_step_recorded_without_the_kernel_summarises_alike(record_recipe: Callable[..., Trace],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Large tensors reduced by the kernel against reduced in the graph with the binding hashing: the same
    hashes, zeros and NaN counts; statistics to float32 rounding."""
    fields: dict[str, Any] = {"steps": 2, "params": {"mode": "function"}}
    native = record_recipe("tf_wide:build", label="native", **fields)
    monkeypatch.setattr(bundle_hashes, "kernel", lambda: None)
    monkeypatch.setattr(tf_tensors, "kernel", lambda: None)
    fallback = record_recipe("tf_wide:build", label="fallback", **fields)
    for a, b in zip(native.steps, fallback.steps):
        for part in ("gradients", "parameters"):
            assert a[part].keys() == b[part].keys()
            for name, summary in a[part].items():
                other = b[part][name]
                assert summary["hash"] == other["hash"] and summary["zeros"] == other["zeros"], name
                for stat in ("norm", "min", "max", "mean"):
                    assert math.isclose(summary[stat], other[stat], rel_tol=1e-4, abs_tol=1e-9), (name, stat)
        outputs_a = [o["summary"]["hash"] for o in a["module_outputs"]]
        assert outputs_a == [o["summary"]["hash"] for o in b["module_outputs"]]
        assert a["optimizer"]["state"] == b["optimizer"]["state"]


def test_batch_fingerprint_from_the_kernel_is_numpys() -> None:
    """`batch_record` hashes and reduces a batch in one kernel pass (numpy's where the kernel has no answer:
    integers, NaN or Inf, a half type, an empty array): the same hashes and, to rounding, the same numbers."""
    from repro_audit.probes.tf.step_record import batch_record

    rng = np.random.default_rng(5)
    images = rng.standard_normal((8, 32, 32, 3), dtype=np.float32)
    images[0, 0, 0, :] = 0.0
    batch = {"x": images, "y": rng.integers(0, 10, 8), "mask": np.array([1.0, np.nan, -np.inf], np.float32),
             "empty": np.zeros((0, 3), np.float32), "half": rng.standard_normal(100).astype(np.float16),
             "weights": rng.standard_normal(3000)}
    record, values = batch_record(batch)
    assert list(record["tensors"]) == list(batch) and set(values) == set(batch)
    for name, array in batch.items():
        found, expected = record["tensors"][name], summarize_array(array)
        assert found.keys() == expected.keys() and found["hash"] == expected["hash"], name
        for key, value in expected.items():
            if isinstance(value, float) and math.isfinite(value):
                # The kernel folds float32 lanes into double totals by blocks: sums hold to float32 rounding.
                scale = abs(expected["max_abs"] or 1.0)
                assert found[key] == pytest.approx(value, rel=1e-6, abs=1e-6 * scale), (name, key)
            elif isinstance(value, float):  # NaN or an infinity: numpy's exact answer
                assert str(found[key]) == str(value), (name, key)
            else:
                assert found[key] == value, (name, key)
    assert record["tensors"]["x"]["zeros"] == 3 and record["tensors"]["mask"]["nan"] == 1

"""`repeated_unpack.unpack` (a plan per layout, reused every step) gives exactly `tensors.unpack`'s summaries."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from repro_audit.probes.common.native_summary import kernel
from repro_audit.probes.tf import repeated_unpack, tensors

pytestmark = [pytest.mark.tensorflow, pytest.mark.skipif(kernel() is None, reason="no C compiler for the kernel")]
tf = pytest.importorskip("tensorflow")


def _step_outputs(rows: Any, scale: Any) -> tuple[tensors.Layout, dict[str, Any]]:
    """Tensors of every kind `pack` sorts, some of `rows` (a run-time shape) rows, all scaled by `scale`."""
    grid = tf.reshape(tf.range(40_000, dtype=tf.float32), [200, 200]) * scale - 7.0
    named = [
        ("parameters/dense/kernel", tf.ones([3, 4]) * scale),  # small: numpy's reduceat row
        ("parameters/big/kernel", grid),  # large state: the kernel reduces it
        ("gradients/dense/kernel", tf.zeros([3, 4], tf.float64) + tf.cast(scale, tf.float64)),
        ("optimizer/dense/kernel/m", tf.fill([3, 4], scale)),  # hash only
        ("optimizer/big/kernel/m", grid * 2.0),  # large, hash only
        ("module_outputs/dense#0", tf.fill(tf.stack([rows, 3]), scale)),  # shape known at run time
        ("module_outputs/big#0", tf.nn.relu(grid)),  # large: zeros left null
        ("module_outputs/half#0", tf.cast(grid[:2], tf.float16)),  # a half type: numpy's statistics
        ("module_outputs/empty#0", tf.zeros([0, 3])),
        ("loss_terms/ce", scale * 0.5),
        ("optimizer/iterations", tf.constant(3, tf.int64)),  # not floating point: `others`
    ]
    return tensors.pack(named, hash_only=tensors.hash_only, separate_state=True)


def test_a_layout_unpacked_again_and_again_summarises_as_tensors_unpack() -> None:
    """Steps of one layout with new values, then other run-time shapes, then NaN and Inf: the plan made at
    the first step must give every later step's own summaries, values and key order."""
    layouts: list[tensors.Layout] = []

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32)], autograph=False)
    def step(rows: Any, scale: Any) -> dict[str, Any]:
        layout, outputs = _step_outputs(rows, scale)
        layouts.append(layout)
        return outputs

    seen = []
    for rows, scale in ((2, 1.0), (2, -3.5), (5, 0.25), (2, 2.0), (2, float("nan")), (5, float("inf"))):
        outputs = step(tf.constant(rows), tf.constant(scale))
        [layout] = layouts  # one trace: the same layout every step
        expected, expected_values = tensors.unpack(layout, outputs, keep_values=True)
        found, values = repeated_unpack.unpack(layout, outputs, keep_values=True)
        assert json.dumps(found) == json.dumps(expected)  # key order, hashes, every number (NaN as NaN)
        assert list(values) == list(expected_values)
        for key, array in values.items():
            np.testing.assert_array_equal(array, expected_values[key])
            assert array.shape == expected_values[key].shape
        assert found["module_outputs/dense#0"]["shape"] == [rows, 3]
        seen.append(found["parameters/big/kernel"]["hash"])
    assert len(set(seen)) == len(seen)  # each step's own values, not the first step's
    assert set(layouts[0].plans) == {((2, 3),), ((5, 3),)}  # one plan per run-time shape, reused
    assert found["module_outputs/big#0"]["inf"] > 0 and found["module_outputs/big#0"]["zeros"] is None
    assert found["module_outputs/half#0"]["dtype"] == "float16"

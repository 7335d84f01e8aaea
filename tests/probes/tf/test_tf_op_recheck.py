"""TF eager ops executed twice: a stateless Python op with a hidden counter is named, nothing else is."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tensorflow.python.ops import script_ops

from repro_audit.probes.tf.op_recheck import TfOpRecheck

CALLS = [0]


def _drifting(x: np.ndarray) -> np.ndarray:
    CALLS[0] += 1
    return (x * (1.0 + 1e-3 * CALLS[0])).astype(np.float32)


def test_drifting_stateless_py_op_is_the_only_one_named() -> None:
    recheck = TfOpRecheck(module_of=lambda: "dense")
    recheck.step = 1
    variable = tf.Variable(tf.ones([2, 2]))
    recheck.install()
    try:
        x = tf.matmul(tf.ones([2, 3]), tf.ones([3, 2]))
        # An eager op (numpy_function would call Python directly): stateless by its op def, so re-executed.
        token = script_ops._py_funcs.insert(_drifting)
        y = tf.raw_ops.PyFuncStateless(input=[x], token=token, Tout=[tf.float32])[0]
        variable.assign_add(y)
    finally:
        recheck.uninstall()
    assert [d["op"] for d in recheck.disagreements] == ["PyFuncStateless"]
    found = recheck.disagreements[0]
    assert (found["module"], found["dtype"], found["shape"]) == ("dense", "float32", [2, 2])
    assert found["source"]["file"] == __file__ and found["distance"]["differing"] == 4
    assert recheck.ops_checked >= 2
    # The stateful assign ran once: re-executing it would have added y twice.
    np.testing.assert_array_equal(variable.numpy(), 1.0 + y.numpy())

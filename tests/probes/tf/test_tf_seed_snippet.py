"""The seed thread's snippet, recorded: a zero-weighted masked entropy still sends NaN to the logits.

15 logits, 10 unmasked, `loss = 0.0 * ce`: the gradient is NaN at the 10 unmasked positions and 0 at the 5
masked ones, and NaN provenance names the backward Mul of softmax by log_softmax in the zero-weighted term,
not the -inf the mask wrote in the forward pass. The same in eager, tf.function and tf.compat.v1 graph mode.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")


@pytest.mark.parametrize("mode", ["eager", "function", "graph"])
def test_nan_gradients_at_the_unmasked_logits_and_their_origin(record_fixture, mode: str) -> None:
    trace = record_fixture("seed_snippet", f"params.mode={mode}", steps=1, values="first", label=mode)
    step = trace.step(1)
    assert step["loss_terms"]["ce"]["weight"] == 0.0
    assert math.isclose(step["loss_terms"]["ce"]["value"], math.log(10), rel_tol=1e-6)
    assert step["total_loss"] == 0.0

    [name] = step["gradients"]
    gradient = step["gradients"][name]
    assert (gradient["nan"], gradient["zeros"], gradient["numel"]) == (10, 5, 15)
    values = trace.values(1).get(f"gradients/{name}")
    assert np.isnan(values[:10]).all()
    assert (values[10:] == 0.0).all()

    provenance = step["nan_provenance"]
    assert provenance["nonfinite_gradients"] == [name]
    first = provenance["origins"][0]
    assert (first["node"], first["forward_op"], first["phase"]) == ("Mul", "Mul", "backward")
    assert first["inputs_from"] == ["Softmax", "LogSoftmax"]
    assert (first["loss_term"], first["loss_weight"]) == ("ce", 0.0)
    assert first["saved_nonfinite"] == {"LogSoftmax": {"nan": 0, "posinf": 0, "neginf": 5}}
    assert first["grad_out"] == {"nan": 5, "inf": 0, "numel": 15}
    # The mask's -inf (a forward SelectV2) is where it belongs: not an origin.
    assert all(origin["phase"] == "backward" for origin in provenance["origins"])

    attribution = step["term_attribution"]["ce"]
    assert attribution["weight"] == 0.0
    assert attribution["nonfinite"] == {name: 10}


def test_the_graph_labels_the_product_with_its_term_and_leaves_the_mask_unlabelled(record_fixture) -> None:
    trace = record_fixture("seed_snippet", "params.mode=function", steps=1)
    ops = trace.graph(1)["ops"]
    assert trace.step(1)["graph"]["stored"] and trace.structure["graph_steps"] == [1]
    forward = [op for op in ops if op["phase"] == "forward"]
    product = next(op for op in forward if op["op"] == "Mul" and
                   [ops[i]["op"] for i in op["inputs_from"]] == ["Softmax", "LogSoftmax"])
    assert product["loss_term"] == "ce"
    mask = next(op for op in forward if op["op"] == "Less")
    assert mask["loss_term"] is None  # no variable feeds the mask: no term's gradient runs through it
    backward = [op for op in ops if op["phase"] == "backward" and op.get("forward_op") == product["index"]]
    assert {op["op"] for op in backward} >= {"Mul"}
    assert all(op["loss_term"] == "ce" for op in backward)
    assert {op["phase"] for op in ops} == {"forward", "backward", "optimizer"}

"""Tensors of LARGE_NUMEL elements and more take the other path of the recorded step: their statistics are
reduced in the graph, they come back without a copy, and the state a replay needs is kept in shadows.
The summaries must be those numpy gives, and replays must leave training exactly as it was.
"""

from __future__ import annotations

import math

import pytest

from repro_audit.probes.common.hashing import summarize_array

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")

KERNEL = "dense.kernel"


@pytest.mark.parametrize("mode", ["function", "eager"])
def test_large_summaries_are_numpys_and_layer_outputs_leave_zeros_out(record_recipe, mode: str) -> None:
    trace = record_recipe("tf_wide:build", label=mode, steps=2, params={"mode": mode}, capture={"values": "all"})
    step = trace.step(2)
    values = trace.values(2)
    for key, summary in [(f"gradients/{KERNEL}", step["gradients"][KERNEL]),
                         (f"parameters/{KERNEL}", step["parameters"][KERNEL])]:
        expected = summarize_array(values.get(key))
        assert summary["numel"] == 128 * 128 and summary["hash"] == expected["hash"]
        assert summary["zeros"] == expected["zeros"]
        for stat in ("norm", "min", "max", "mean", "max_abs"):
            assert math.isclose(summary[stat], expected[stat], rel_tol=1e-5, abs_tol=1e-9), stat
    output = next(o for o in step["module_outputs"] if o["module"] == "dense")
    expected = summarize_array(values.get("module_outputs/dense#0"))
    assert output["summary"]["hash"] == expected["hash"] and output["summary"]["zeros"] is None
    assert math.isclose(output["summary"]["norm"], expected["norm"], rel_tol=1e-5)


def test_a_replay_from_the_shadowed_state_leaves_training_untouched(record_recipe) -> None:
    fields = {"steps": 3, "params": {"nan_from_step": 2}}
    probed = record_recipe("tf_wide:build", label="probed", **fields)
    quiet = record_recipe("tf_wide:build", label="quiet", capture={"nan_provenance": False,
                                                                   "term_attribution": False}, **fields)
    provenance = probed.step(2)["nan_provenance"]
    [origin] = provenance["origins"]
    assert (origin["node"], origin["forward_op"], origin["inputs_from"]) == ("SqrtGrad", "Sqrt", ["Sum"])
    assert (origin["loss_term"], origin["loss_weight"], origin["phase"]) == ("sqrt_zero", 1.0, "backward")
    assert provenance["nonfinite_gradients"] == [KERNEL]
    attribution = probed.step(2)["term_attribution"]
    assert attribution["sqrt_zero"]["nonfinite"] == {KERNEL: 128 * 128}
    # The replay started from the state step 2 started from (the 128 x 128 kernel came from its shadow):
    # the head's gradient, which only mse sends, is the one step 2 recorded.
    head = probed.step(2)["gradients"]["dense_1.kernel"]["norm"]
    assert math.isclose(attribution["mse"]["norm"]["dense_1.kernel"], head, rel_tol=1e-6)
    for a, b in zip(quiet.steps, probed.steps):
        for part in ("parameters", "gradients"):
            assert {k: v["hash"] for k, v in a[part].items()} == {k: v["hash"] for k, v in b[part].items()}
        assert a["optimizer"]["state"] == b["optimizer"]["state"]
    assert quiet.step(2)["nan_provenance"] is None

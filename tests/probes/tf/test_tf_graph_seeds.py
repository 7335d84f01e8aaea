"""TF1 graph mode: op seeds come from the graph seed and the op's position, so added ops move them.

The initialisation record keeps, per variable, the op seed its initializer got (`seed_offset`), how many ops
and random ops came before it, and the recipe's ops in creation order (`build_ops`), so two traces show
which ops were added before a variable. TF 2.x counts only unseeded random ops (TF 1.15 counted every op):
an added variable moves the next variable's seed; added loss arithmetic no longer does.
"""

from __future__ import annotations

from typing import Any

import pytest

from repro_audit.audit.trace import Trace

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")


def tensor(trace: Trace, name: str) -> dict[str, Any]:
    return next(t for t in trace.initialisation["tensors"] if t["name"] == name)


def added_before(base: Trace, other: Trace, name: str) -> list[str]:
    """Names of the ops `other` created before `name`'s initializer that `base` did not create."""
    def before(trace: Trace) -> list[str]:
        limit = tensor(trace, name)["ops_before"]
        return [op["name"] for op in trace.initialisation["build_ops"] if op["index"] <= limit]

    known = set(before(base))
    return [op for op in before(other) if op not in known]


def test_a_variable_added_before_another_changes_its_op_seed_and_initial_value(record_recipe) -> None:
    base = record_recipe("tf_graph_seeds:build", label="base", steps=1)
    gate = record_recipe("tf_graph_seeds:build", label="gate", steps=1, params={"extra": "gate"},
                         loss_weights={"gate": 0.0})
    assert tensor(base, "first.kernel")["seed_offset"] == tensor(gate, "first.kernel")["seed_offset"]
    assert tensor(base, "first.kernel")["summary"]["hash"] == tensor(gate, "first.kernel")["summary"]["hash"]

    before, after = tensor(base, "second.kernel"), tensor(gate, "second.kernel")
    assert (before["generator"], before["initialiser"].split()[0]) == ("tf-op-seed", "RandomUniform")
    assert after["seed_offset"] != before["seed_offset"]
    assert after["random_ops_before"] == before["random_ops_before"] + 1
    assert after["rng_fingerprint"] != before["rng_fingerprint"]
    assert after["summary"]["hash"] != before["summary"]["hash"]
    added = added_before(base, gate, "second.kernel")
    assert "gate/kernel" in added and "gate/kernel/Initializer/random_uniform/RandomUniform" in added
    assert base.initialisation["generators"]["tf-global-seed"] == {"seed": 0}


def test_added_loss_arithmetic_moves_the_op_count_but_not_the_seed_in_tf2(record_recipe) -> None:
    base = record_recipe("tf_graph_seeds:build", label="base", steps=1)
    extra = record_recipe("tf_graph_seeds:build", label="loss_ops", steps=1, params={"extra": "loss_ops"},
                          loss_weights={"zero_loss": 0.0})
    before, after = tensor(base, "second.kernel"), tensor(extra, "second.kernel")
    added = added_before(base, extra, "second.kernel")
    assert added and all(name.startswith("zero_loss/") for name in added)
    assert after["ops_before"] == before["ops_before"] + len(added)
    rule = base.initialisation["generators"]["tf-op-seed"]["rule"]
    if rule.startswith("per-graph counter"):
        assert after["seed_offset"] == before["seed_offset"]
        assert after["summary"]["hash"] == before["summary"]["hash"]
    else:  # TF 1.x: the seed thread's world, where any added op shifts the seed
        assert after["seed_offset"] != before["seed_offset"]


def test_graph_replays_leave_training_and_the_random_streams_untouched(record_recipe) -> None:
    quiet = record_recipe("tf_graph_seeds:build", label="quiet", steps=3,
                          capture={"term_attribution": False, "nan_provenance": False})
    probed = record_recipe("tf_graph_seeds:build", label="probed", steps=3)
    assert probed.step(1)["term_attribution"]["mse"]["nonzero"]
    assert quiet.step(1)["term_attribution"] is None
    for a, b in zip(quiet.steps, probed.steps):
        assert {k: v["hash"] for k, v in a["parameters"].items()} == {k: v["hash"] for k, v in b["parameters"].items()}
        assert a["random_draws"] == b["random_draws"]
    draws = [step["random_draws"] for step in probed.steps]
    assert [len(d) for d in draws] == [1, 1, 1]
    assert draws[0][0]["op"] == "RandomUniform" and draws[0][0]["generator"] == "tf-op-seed"
    assert [d[0]["offset_before"] for d in draws] == [0, 6, 12]  # a [2, 3] mask per step from one stream
    assert len({d[0]["rng_fingerprint"] for d in draws}) == 3

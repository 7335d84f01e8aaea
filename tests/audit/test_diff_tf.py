"""The differ on TensorFlow runs: the same verdicts as for torch, from traces it reads without knowing the
framework (issue 4, "Done when"). Every run is recorded for real, in its own subprocess, as `diff` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.config import RunConfig, load_config
from repro_audit.audit.diff import compare_check, compare_traces
from repro_audit.audit.divergence import Comparison, Divergence
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "fixtures" / "configs" / "tf"
RECIPES = ROOT / "tests" / "probes" / "tf" / "recipes"
STEPS = 2  # NaN shows at step 1, seed offsets before it; the second step shows what a step changes
STEPS_OF = {"pretrain": 3, "baseline": 3, "baseline_again": 3}  # pretrain's losses join at step 3

FIXTURE_RUNS: dict[str, str] = {
    "baseline": "baseline",
    "baseline_again": "baseline",
    "zero_entropy_loss": "zero_entropy_loss",
    "zero_att_loss_simplified": "zero_att_loss_simplified",
    "zero_att_loss_per_head": "zero_att_loss_per_head",
    "zero_att_loss_per_layer": "zero_att_loss_per_layer",
    "pretrain": "pretrain",
    "graph_baseline": "graph_baseline",
    "graph_zero_att_loss_simplified": "graph_zero_att_loss_simplified",
}
# Tiny models for what needs no Transformer: a Sequential whose Keras names shift, a v1 graph with a gate.
RECIPE_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "dense_2_layers": ("tf_keras_names:sequential", {"params": {"widths": [4, 1]}}),
    "dense_3_layers": ("tf_keras_names:sequential", {"params": {"widths": [4, 4, 1]}}),
    "graph_plain": ("tf_graph_seeds:build", {"capture": {"values": "first"}}),
    "graph_gate": ("tf_graph_seeds:build", {"params": {"extra": "gate"}, "loss_weights": {"gate": 0.0},
                                            "capture": {"values": "first"}}),
}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    folder = tmp_path_factory.mktemp("tf-diff-traces")
    jobs = [(load_config(TF / f"{config}.yaml", steps=STEPS_OF.get(name, STEPS)), folder / f"{name}.trace")
            for name, config in FIXTURE_RUNS.items()]
    for name, (recipe, fields) in RECIPE_RUNS.items():
        config = RunConfig.from_dict({"recipe": recipe, "framework": "tensorflow", "label": name, "steps": 1,
                                      **fields}, config_dir=str(RECIPES))
        jobs.append((config, folder / f"{name}.trace"))
    results = record_all(jobs)
    assert all(result.ok for result in results), [result.failure_line() for result in results if not result.ok]
    return {name: Trace(path) for name, (_, path) in zip([*FIXTURE_RUNS, *RECIPE_RUNS], jobs)}


def _with_cause(comparison: Comparison, cause: str) -> list[Divergence]:
    return [divergence for divergence in comparison.walk() if divergence.cause == cause]


def _causes(comparison: Comparison) -> set[str]:
    return {divergence.cause for divergence in comparison.walk() if divergence.cause}


def test_check_on_baseline_is_identical_run_to_run(traces: dict[str, Trace]) -> None:
    [comparison] = compare_check([traces["baseline"], traces["baseline_again"]])
    assert comparison.identical, [d.explanation for d in comparison.walk()][:5]
    assert comparison.category_counts["gradients"]["compared"] == 3 * 92
    assert comparison.category_counts["random_draws"]["compared"] > 0
    assert all(counts["diverged"] == 0 for counts in comparison.category_counts.values())


def test_zero_weighted_entropy_sends_nan_through_softmax_times_log_softmax(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["zero_entropy_loss"])
    assert comparison.first_divergence is not None and comparison.first_divergence.cause == "config_change"
    [origin] = _with_cause(comparison, "nan_zero_weight_term")[:1]
    assert origin.step == 1
    assert (origin.evidence["loss_term"], origin.evidence["loss_weight"]) == ("att_entropy_l0", 0.0)
    assert (origin.evidence["node"], origin.evidence["forward_op"]) == ("Mul", "Mul")
    assert origin.evidence["module"] == "decoder.layers.0.att_loss"
    assert "att_entropy_l0 with weight 0.0" in origin.explanation
    assert "Mul (Mul of Softmax and LogSoftmax: 0 x -inf where a mask wrote -inf" in origin.explanation
    assert origin.evidence["parameters"] > 0
    assert any(child.category == "gradients" and child.kind == "nonfinite" for child in origin.children)


def test_zero_weighted_attention_losses_change_graph_and_seed_offsets_without_nan(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["zero_att_loss_simplified"])
    causes = _causes(comparison)
    assert {"config_change", "graph_change", "seed_offset_shift"} <= causes
    assert not {"nan_zero_weight_term", "nan_weighted_term"} & causes
    graph = next(d for d in _with_cause(comparison, "graph_change") if d.step == 1)
    assert graph.evidence["ops_added"] > 0
    assert any("att_loss" in str(group["module"]) for group in graph.evidence["by_group"])
    assert "weight 0.0" in graph.explanation
    # Keras 3 draws an unseeded initializer's seed from Python's random when the layer is constructed: the
    # head gate's one seed moves every later layer's seeds by one (its kernel is never even built here).
    [shift] = _with_cause(comparison, "seed_offset_shift")
    assert shift.evidence["shift"] == 1
    assert shift.evidence["drawn_by"][0]["module"] == "decoder.layers.0.att_loss.head_gate"
    assert "1 more Keras seeds were drawn before it in run B" in shift.explanation
    assert "decoder.layers.0.att_loss.head_gate (1 seed: GlorotUniform, only in run B)" in shift.explanation
    assert shift.evidence["shifted_tensors"] > 10


@pytest.mark.parametrize("variant", ["zero_att_loss_per_head", "zero_att_loss_per_layer"])
def test_zero_weighted_attention_loss_variants_get_the_verdicts_torch_gets(traces: dict[str, Trace],
                                                                         variant: str) -> None:
    comparison = compare_traces(traces["baseline"], traces[variant])
    assert comparison.first_divergence is not None and comparison.first_divergence.cause == "config_change"
    causes = _causes(comparison)
    assert {"graph_change", "seed_offset_shift"} <= causes
    assert not {"nan_zero_weight_term", "nan_weighted_term", "nondeterminism"} & causes
    graph = next(d for d in _with_cause(comparison, "graph_change") if d.step == 1)
    assert "weight 0.0" in graph.explanation
    # The first tensor the gate's seed shifted is a dropout's SeedGenerator state: a buffer, named so.
    [shift] = _with_cause(comparison, "seed_offset_shift")
    assert shift.explanation.startswith("Buffer decoder.layers.0.ff.dropout.seed_generator.state got other "
                                        "initial values because 1 more Keras seeds were drawn"), shift.explanation


def test_pretrain_matches_baseline_until_its_losses_join(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["pretrain"], ignore=("config",))
    assert "nondeterminism" not in _causes(comparison)
    values = [d for d in comparison.walk() if d.category in ("gradients", "parameters", "loss_terms",
                                                              "module_outputs")]
    assert values and min(d.step for d in values) == 3, "steps 1 and 2 train identically"
    graph = [d for d in _with_cause(comparison, "graph_change") if d.step is not None]
    assert [d.step for d in graph] == [3] and "weight 0.0" in graph[0].explanation
    # The losses are added without parameters, so no value of any parameter differs, even at step 3.
    assert not [d for d in values if d.category in ("gradients", "parameters")]


def test_graph_mode_names_the_random_op_added_before_the_shifted_variable(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["graph_baseline"], traces["graph_zero_att_loss_simplified"])
    causes = _causes(comparison)
    assert {"config_change", "graph_change", "seed_offset_shift"} <= causes
    assert not {"nan_zero_weight_term", "nan_weighted_term"} & causes
    [shift] = _with_cause(comparison, "seed_offset_shift")
    assert shift.name == "decoder.layers.0.ff.up.kernel"
    assert shift.evidence["generator"] == "tf-op-seed" and shift.evidence["shift"] == 1
    gate_op = "decoder/layers/0/att_loss/head_gate/kernel/Initializer/random_uniform/RandomUniform"
    assert shift.evidence["drawn_by"] == [{"module": "decoder.layers.0.att_loss.head_gate", "count": 128,
                                           "draws": 1, "ops": [gate_op], "only_here": True}]
    assert "1 more random ops were seeded before it in run B" in shift.explanation
    assert gate_op in shift.explanation


def test_graph_mode_gate_before_a_variable_moves_its_op_seed_and_values(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["graph_plain"], traces["graph_gate"])
    [shift] = _with_cause(comparison, "seed_offset_shift")
    assert shift.name == "second.kernel"
    assert shift.evidence["seed_offset"]["b"] == shift.evidence["seed_offset"]["a"] + 1
    assert shift.evidence["mismatched"] == shift.evidence["numel"] == 6  # every initial value differs
    assert "by gate (1 random op: gate/kernel/Initializer/random_uniform/RandomUniform, only in run B)" in \
        shift.explanation
    assert not [d for d in comparison.walk() if d.category == "initialisation" and d.name == "first.kernel"]


def test_graph_mode_op_diff_names_the_added_ops_and_aligns_them_by_module(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["graph_plain"], traces["graph_gate"])
    graph = next(d for d in comparison.walk() if d.category == "graph" and d.name == "op graph at step 1")
    groups = {(group["module"], group["loss_term"]): group for group in graph.evidence["by_group"]}
    # The gate's own variable is the added VarHandleOp; the shared layer `second` gains nothing (aligned on
    # op type alone, its VarHandleOp was once reported as added).
    assert groups["gate", "gate"]["ops"]["added"] == {"VarHandleOp": 1}
    assert not [key for key in groups if key[0] == "second"], groups
    assert graph.evidence["feeds_shared"] == 0
    assert "None of them feeds the model's shared forward pass" in graph.explanation
    assert "MatMul" in graph.explanation


def test_shifted_keras_auto_names_are_renames(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["dense_2_layers"], traces["dense_3_layers"])
    initialisation = [d for d in comparison.walk() if d.category == "initialisation"]
    renamed = {(d.evidence["a"], d.evidence["b"]) for d in initialisation if d.kind == "renamed"}
    assert renamed == {("dense_1.kernel", "dense_2.kernel"), ("dense_1.bias", "dense_2.bias")}
    assert not [d for d in initialisation if d.kind == "removed"]
    assert sorted(d.name for d in initialisation if d.kind == "added") == ["dense_1.bias", "dense_1.kernel"]
    # The renamed layer is compared with its counterpart at every step, not listed as gone.
    gradients = [d for d in comparison.walk() if d.category == "gradients" and d.step == 1]
    assert "dense_2.kernel" in {d.name for d in gradients} and not [d for d in gradients if d.kind == "removed"]
    [shift] = _with_cause(comparison, "seed_offset_shift")
    assert shift.name == "dense_2.kernel" and shift.evidence["shift"] == 1
    assert "by dense_1 (1 seed: GlorotUniform, only in run B)" in shift.explanation

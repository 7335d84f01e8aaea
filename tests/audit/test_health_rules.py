"""The health rules over step records from real runs of the fixture cases, and the text they print.

Runs go in-process through the step recorder, with `step_health` called the way the recorder calls it at
the end of a step (its own summaries reused), so these tests hold whether or not a trace carries `health`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from repro_audit.audit.cli_health import render_text
from repro_audit.audit.config import load_config
from repro_audit.audit.errors import TraceError
from repro_audit.audit.health import Finding, HealthReport, Thresholds, check_steps, infer_num_classes
from repro_audit.audit.recipe import as_recipe, resolve_recipe
from repro_audit.audit.trace.health_fill import complete_health, module_types
from repro_audit.probes.torch.health import step_health
from repro_audit.probes.torch.modules import module_tree
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder

HEALTH = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch" / "health"
BASELINE = HEALTH.parent / "baseline.yaml"


def record_in_process(config_path: Path, *, steps: int | None = None, overrides: Sequence[str] = (),
                      as_read: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Step records (with `health`) and the step-1 graph, as plain JSON data like a trace holds them:
    `health` completed as the trace reader completes it, or (`as_read=False`) compact as written."""
    config = load_config(config_path, steps=steps, overrides=overrides)
    torch.manual_seed(config.seed)
    build = resolve_recipe(config.recipe, config_dir=Path(config.config_dir or "."))
    recipe = as_recipe(build(dict(config.params)), spec=config.recipe)
    recorder = TorchStepRecorder(recipe.model, recipe.optimizer, capture=config.capture,
                                 weight_of=config.weight_for, ledger=RandomLedger(module_of=lambda: None))
    batches, records, graph = iter(recipe.batches), [], None
    types = module_types({"modules": module_tree(recipe.model)})
    try:
        for step in range(1, config.steps + 1):
            batch = next(batches)
            recipe.optimizer.zero_grad(set_to_none=True)
            recorder.begin_step(step, batch)
            recorder.backward(recorder.combine_loss(recipe.loss(recipe.model, batch)))
            recorder.after_backward()
            recipe.optimizer.step()
            stored = recorder.finish_graph()
            graph = stored if step == 1 else graph
            record = recorder.end_step()
            record["health"] = step_health(
                recorder.tracker.calls, step=step,
                loss_terms={name: term["value"] for name, term in record["loss_terms"].items()},
                num_classes=recipe.extras.get("num_classes"))
            kept = ("step", "loss_terms", "health", "gradients", "parameters", "module_outputs")  # health's sources
            records.append(json.loads(json.dumps({key: record[key] for key in kept})))
            if as_read:
                records[-1]["health"] = complete_health(records[-1], types)
    finally:
        recorder.close()
        del recipe, batches
        _forget_leaked_graphs()
    return records, json.loads(json.dumps(graph)) if graph else None


def _forget_leaked_graphs() -> None:
    import sys

    module = sys.modules.get("health_recipes")
    if module is not None:
        module.validation_losses.clear()


def report_for(name: str, **kwargs: Any) -> HealthReport:
    records, graph = record_in_process(HEALTH / f"{name}.yaml", **kwargs)
    return check_steps(records, graph=graph, label=name)


def rules_and_layers(report: HealthReport) -> set[tuple[str, str]]:
    return {(finding.rule, finding.layer) for finding in report.findings}


# -- every fixture problem is flagged, and only where it is -------------------------------------------


def test_saturated_tanh_flags_every_tanh_layer_from_step_1() -> None:
    report = report_for("saturated_tanh")
    saturated = [f for f in report.findings if f.rule == "saturation"]
    assert [f.layer for f in saturated] == ["1", "3", "5"]
    assert all(f.step == 1 and f.value > 0.5 and f.evidence["kind"] == "tanh" for f in saturated)
    assert {f.rule for f in report.findings} == {"saturation"}


def test_dead_relu_flags_the_layer_with_the_negative_bias() -> None:
    report = report_for("dead_relu")
    dead = {f.layer: f for f in report.findings if f.rule == "dead_units"}
    assert dead["1"].value == 1.0 and dead["1"].evidence["dead_units"] == dead["1"].evidence["units"] == 64
    assert dead["1"].step == 1 and dead["1"].steps == [1, 2, 3]
    # Its consequence: the first layer gets no gradient at all.
    vanishing = [f for f in report.findings if f.rule == "vanishing_gradients"]
    assert [(f.layer, f.value) for f in vanishing] == [("0", 0.0)]
    assert vanishing[0].message == "every gradient is exactly 0"


def test_exploding_gradients_flags_every_layer_and_the_nan_that_follows() -> None:
    report = report_for("exploding_gradients")
    exploding = [f for f in report.findings if f.rule == "exploding_gradients"]
    assert len(exploding) == 11 and all(f.step == 1 and f.value > 1e3 for f in exploding)
    assert exploding[0].layer == "0" and exploding[0].steps == [1]  # the NaN of step 2 is its own finding
    assert "gradient norm" in exploding[0].message and "> 1e+03" in exploding[0].message
    nonfinite = [f for f in report.findings if f.rule == "nonfinite_gradients"]
    assert len(nonfinite) == 1 and nonfinite[0].step == 2 and "nan" not in exploding[0].message.lower()
    assert nonfinite[0].message.startswith("gradients are nan from step 2 in 11 layers (first: 0)")


def test_wrong_initial_loss_infers_ten_classes_from_the_graph() -> None:
    report = report_for("wrong_initial_loss")
    assert [f.rule for f in report.findings] == ["initial_loss"]
    finding = report.findings[0]
    assert finding.layer == "ce" and finding.step == 1 and finding.value > 10
    assert finding.evidence["num_classes"] == 10
    assert finding.evidence["source"] == "inferred from aten::nll_loss_forward input [64, 10]"
    assert "vs -log(1/10) = 2.3" in finding.message


def test_a_declared_class_count_wins_over_the_graph() -> None:
    report = report_for("wrong_initial_loss", overrides=["params.declare_classes=true"])
    assert report.findings[0].evidence["source"] == "declared by the recipe"


def test_leaking_loss_flags_heap_growth_of_tens_of_mib_a_step() -> None:
    report = report_for("leaking_loss")
    assert [f.rule for f in report.findings] == ["memory_growth"]
    finding = report.findings[0]
    assert finding.layer in ("CPU heap in use", "process RSS")
    assert finding.step == 3 and finding.steps == [3, 4, 5, 6]
    assert min(finding.evidence["growth_mib"]) > 16 and finding.value > 16


@pytest.mark.parametrize("name, fix", [
    ("saturated_tanh", ["params.weight_std=0.1"]),
    ("dead_relu", ["params.first_bias=0.0"]),
    ("exploding_gradients", ["params.weight_std=0.177", "params.lr=0.01"]),  # He init, a sane step size
    ("wrong_initial_loss", ["params.logit_scale=1.0"]),
    ("leaking_loss", ["params.keep_graph=false"]),
])
def test_the_fix_makes_each_case_healthy(name: str, fix: list[str]) -> None:
    report = report_for(name, overrides=fix, steps=6)
    assert report.healthy, render_text(report)


def test_healthy_control_and_baseline_are_not_flagged() -> None:
    assert report_for("healthy_mlp").healthy
    records, graph = record_in_process(BASELINE, steps=6)
    report = check_steps(records, graph=graph, label="baseline")
    assert report.healthy, render_text(report)
    assert report.not_checked == []  # 6 steps: memory checked; ce's classes inferred from the graph


# -- thresholds, edges, errors -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_relu_records() -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    return record_in_process(HEALTH / "dead_relu.yaml")


def test_thresholds_move_the_line(dead_relu_records: Any) -> None:
    records, graph = dead_relu_records

    def dead(limits: Thresholds) -> set[str]:
        return {f.layer for f in check_steps(records, graph=graph, thresholds=limits).findings
                if f.rule == "dead_units"}

    assert dead(Thresholds()) == {"1", "3"}
    assert dead(Thresholds(dead_units=0.99)) == {"1"}
    assert dead(Thresholds(dead_units=1.0)) == set()  # "more than": all dead is not more than 100%
    vanishing = check_steps(records, graph=graph, thresholds=Thresholds(min_grad_norm=0.0, min_grad_ratio=0.0))
    assert not any(f.rule == "vanishing_gradients" for f in vanishing.findings)


def test_layer_gradient_thresholds(dead_relu_records: Any) -> None:
    records, graph = dead_relu_records
    largest = max(stats["grad_norm"] for stats in records[0]["health"]["layers"].values())
    exploding = check_steps(records, graph=graph, thresholds=Thresholds(max_grad_norm=largest * 0.999))
    assert any(f.rule == "exploding_gradients" and f.step == 1 for f in exploding.findings)
    calm = check_steps(records, graph=graph, thresholds=Thresholds(max_grad_norm=largest * 10))
    assert not any(f.rule == "exploding_gradients" for f in calm.findings)


def test_records_as_written_are_completed_by_the_rules() -> None:
    """check_steps also takes step records straight from the recorder, their health still compact."""
    written, graph = record_in_process(HEALTH / "dead_relu.yaml", as_read=False)
    assert "layers" not in written[0]["health"] and written[0]["health"]["described_outputs"]
    read, _ = record_in_process(HEALTH / "dead_relu.yaml")
    from_written = check_steps(written, graph=graph)
    assert from_written.findings and {(f.rule, f.layer, f.step) for f in from_written.findings} == \
        {(f.rule, f.layer, f.step) for f in check_steps(read, graph=graph).findings}


def test_a_nonfinite_gradient_is_one_finding_and_silences_what_follows_it(dead_relu_records: Any) -> None:
    records = copy.deepcopy(dead_relu_records[0])
    records[1]["health"]["layers"]["2"]["grad_norm"] = float("nan")
    found = check_steps(records, thresholds=Thresholds(max_grad_norm=float("inf"))).findings
    assert [(f.rule, f.layer, f.step) for f in found if f.rule in ("nonfinite_gradients", "exploding_gradients")] \
        == [("nonfinite_gradients", "2", 2)]
    assert not [f for f in found if f.rule in ("vanishing_gradients", "saturation", "dead_units") and f.step >= 2]


def test_memory_growth_needs_growth_at_every_step(dead_relu_records: Any) -> None:
    records = [copy.deepcopy(dead_relu_records[0][0]) for _ in range(6)]
    for step, record in enumerate(records, start=1):
        record["step"] = step
        record["health"]["memory"]["heap_in_use"] = 100 * 2**20 + step * 3 * 2**20
    assert [f.rule for f in check_steps(records).findings if f.rule == "memory_growth"] == ["memory_growth"]
    records[3]["health"]["memory"]["heap_in_use"] = records[2]["health"]["memory"]["heap_in_use"]  # one flat step
    assert not [f for f in check_steps(records).findings if f.rule == "memory_growth"]
    short = check_steps(records[:4])
    assert any(reason.startswith("memory growth: needs 5 steps") for reason in short.not_checked)


def test_memory_growth_is_per_step_where_the_heap_was_read_at_some_steps(dead_relu_records: Any) -> None:
    """The TF probe reads the heap at steps 1-8, then every 8th step (probes/tf/health.py reads_heap): a heap
    growing 2 MiB a step grows 16 MiB between later readings, which is growth per step, not a jump."""
    from repro_audit.probes.tf.health import reads_heap

    def records_of(growth_mib: float) -> list[dict[str, Any]]:
        rss = [700.0 + step for step in range(1, 33)]  # RSS wanders upward, as it may in a healthy run
        heap = [100.0 + growth_mib * step if reads_heap(step) else None for step in range(1, 33)]
        return _memory_records(dead_relu_records, heap, rss)

    assert [step for step in range(1, 33) if reads_heap(step)] == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32]
    [finding] = [f for f in check_steps(records_of(2.0)).findings if f.rule == "memory_growth"]
    assert finding.layer == "CPU heap in use" and finding.steps == [3, 4, 5, 6, 7, 8, 16, 24, 32]
    assert finding.value == pytest.approx(2.0)
    # 0.5 MiB a step is below the 1 MiB threshold, though each later reading is 4 MiB above the one before.
    assert not [f for f in check_steps(records_of(0.5)).findings if f.rule == "memory_growth"]


def _memory_records(dead_relu_records: Any, heap_mib: list[float | None], rss_mib: list[float]
                    ) -> list[dict[str, Any]]:
    records = [copy.deepcopy(dead_relu_records[0][0]) for _ in heap_mib]
    for step, (record, heap, rss) in enumerate(zip(records, heap_mib, rss_mib), start=1):
        record["step"] = step
        record["health"]["memory"].update(heap_in_use=None if heap is None else int(heap * 2**20),
                                          rss=int(rss * 2**20))
    return records


def test_memory_growth_of_a_pooling_allocator_shows_in_rss(dead_relu_records: Any) -> None:
    """TensorFlow's BFC allocator (oneDNN on): heap in use jumps by whole blocks, RSS follows the 32 MiB kept
    a step but stood still at one step (numbers of the TF leaking_loss fixture on such a machine)."""
    heap = [219.1, 350.9, 350.9, 350.9, 350.9, 615.0]
    rss = [684.0, 720.3, 721.2, 753.6, 786.0, 826.3]

    def growth(heap_mib: list[float | None], rss_mib: list[float]) -> list[Any]:
        records = _memory_records(dead_relu_records, heap_mib, rss_mib)
        return [f for f in check_steps(records).findings if f.rule == "memory_growth"]

    [finding] = growth(heap, rss)
    assert finding.layer == "process RSS" and finding.steps == [3, 4, 5, 6]
    assert "grew at 3 of 4 steps from step 2 to 6, by 32.4 to 40.3 MiB" in finding.message
    assert not growth(heap, [684.0, 720.3, 721.2, 721.5, 786.0, 826.3])  # two pauses: not steady
    assert not growth(heap, [684.0, 720.3, 700.0, 753.6, 786.0, 826.3])  # RSS fell by 20 MiB at one step
    assert not growth(heap, rss[:1] + [720.3, 721.2, 753.6, 786.0])  # with three growths, none may pause
    steady_heap = [100.0 + 3 * step for step in range(6)]
    assert [f.layer for f in growth(steady_heap, rss)] == ["CPU heap in use"]  # once, by the live heap
    healthy_rss = [684.0, 684.2, 684.5, 685.1, 685.4, 686.2]  # the fix: 0.2-0.8 MiB a step
    assert not growth(heap[:2] + [350.9] * 4, healthy_rss)
    # A heap that stays flat is a healthy run however RSS wanders while allocators warm up.
    assert not growth([219.1] * 6, [684.0, 739.0, 751.0, 793.0, 793.2, 840.0])
    # Where the heap cannot be read, RSS must grow at every step.
    assert not growth([None] * 6, rss)
    assert [f.layer for f in growth([None] * 6, [684.0 + 33 * step for step in range(6)])] == ["process RSS"]


def test_class_count_inference_reads_cross_entropy_ops(dead_relu_records: Any) -> None:
    _, graph = dead_relu_records
    counts = infer_num_classes(graph)
    assert set(counts) == {"ce"} and counts["ce"].classes == 10
    ops = [{"phase": "forward", "op": "aten::nll_loss_forward", "loss_term": "lm", "input_shapes": [[8, 5], [8]]},
           {"phase": "forward", "op": "aten::nll_loss_forward", "loss_term": "lm", "input_shapes": [[8, 7], [8]]},
           {"phase": "forward", "op": "aten::binary_cross_entropy_with_logits", "loss_term": "bce",
            "input_shapes": [[8, 3], [8, 3]]},
           {"phase": "forward", "op": "aten::nll_loss_forward", "loss_term": "shared", "input_shapes": [[3]]}]
    inferred = infer_num_classes({"ops": ops})
    assert "lm" not in inferred  # two cross entropies that disagree: no guess
    assert inferred["bce"].classes == 2 and inferred["shared"].classes == 3
    graph_mode = [{"phase": "forward", "op": "SparseSoftmaxCrossEntropyWithLogits", "loss_term": "lm",
                   "input_shapes": [[None, None], [None]]},
                  {"phase": "forward", "op": "SparseSoftmaxCrossEntropyWithLogits", "loss_term": "ce",
                   "input_shapes": [[None, 16], [None]]}]
    inferred = infer_num_classes({"ops": graph_mode})
    assert "lm" not in inferred  # an unknown class dimension is no count
    assert inferred["ce"].classes == 16


def test_records_without_health_are_a_trace_error() -> None:
    with pytest.raises(TraceError, match="no health statistics"):
        check_steps([{"step": 1, "loss_terms": {}}], label="old")


# -- the text ------------------------------------------------------------------------------------------


def test_text_summary_golden() -> None:
    findings = [
        Finding(rule="saturation", layer="enc.1", step=1, measure="saturated share", value=0.62, threshold=0.25,
                message="62% of the tanh output is saturated (> 25%)", steps=[1, 2, 3],
                worst={"step": 3, "value": 0.7}, evidence={"type": "Tanh"}),
        Finding(rule="vanishing_gradients", layer="", step=2, measure="gradient norm", value=0.0,
                threshold=1e-7, message="every gradient is exactly 0", steps=[2], evidence={}),
    ]
    report = HealthReport(label="demo", steps=3, findings=findings,
                          not_checked=["memory growth: needs 5 steps, the run has 3 (--steps)"])
    assert render_text(report) == (
        "health of 'demo' (3 steps): 2 anomalies flagged\n"
        "  saturated activations:\n"
        "    enc.1 (Tanh)  step 1: 62% of the tanh output is saturated (> 25%) (at 3 steps; worst 70% at step\n"
        "        3)\n"
        "  vanishing gradients:\n"
        "    (root)  step 2: every gradient is exactly 0\n"
        "  not checked:\n"
        "    memory growth: needs 5 steps, the run has 3 (--steps)"
    )
    capped = HealthReport(label="demo", steps=3, findings=[copy.deepcopy(findings[0]) for _ in range(3)])
    assert render_text(capped, limit=2).endswith("    ... and 1 more (--all shows them)")
    assert render_text(HealthReport(label="ok", steps=6, findings=[])) == "health of 'ok' (6 steps): healthy"
    wide = render_text(report, width=200)
    assert "worst 70% at step 3)\n" in wide and max(map(len, render_text(report, width=40).splitlines())) <= 40
    assert render_text(report, color=True).startswith("health of 'demo' (3 steps): \x1b[1;31m2 anomalies flagged")


def test_a_layer_only_zero_weighted_terms_reach_is_not_vanishing(dead_relu_records: Any) -> None:
    records, graph = copy.deepcopy(dead_relu_records[0]), dead_relu_records[1]
    assert [f.layer for f in check_steps(records, graph=graph).findings if f.rule == "vanishing_gradients"] == ["0"]
    # Say a probe term weighted 0.0 is what reaches layer 0: its zero gradient is by design.
    records[0]["term_attribution"] = {"ce": {"weight": 1.0, "nonzero": {"2.weight": 10}, "nonfinite": {}},
                                      "probe": {"weight": 0.0, "nonzero": {"0.weight": 10}, "nonfinite": {}}}
    assert not [f for f in check_steps(records, graph=graph).findings if f.rule == "vanishing_gradients"]
    records[0]["term_attribution"]["probe"]["weight"] = 0.5  # a weighted term reaches it: vanishing again
    assert [f.layer for f in check_steps(records, graph=graph).findings if f.rule == "vanishing_gradients"] == ["0"]


def test_a_declared_class_count_applies_only_to_the_classification_terms_the_graph_shows() -> None:
    records, graph = record_in_process(HEALTH / "wrong_initial_loss.yaml", overrides=["params.declare_classes=true"])
    records = copy.deepcopy(records)
    health = records[0]["health"]
    health["initial_loss"]["aux"] = {**health["initial_loss"]["ce"], "value": 40.0}  # a regression term
    records[0]["loss_terms"]["aux"] = {**records[0]["loss_terms"]["ce"], "value": 40.0}
    flagged = {f.layer for f in check_steps(records, graph=graph).findings if f.rule == "initial_loss"}
    assert flagged == {"ce"}

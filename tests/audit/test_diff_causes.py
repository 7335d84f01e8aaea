"""Every cause the differ names, found on real fixture runs recorded in subprocesses (issue 3, "Done when")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.diff import compare_check, compare_traces
from repro_audit.audit.divergence import Comparison, Divergence
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace

TORCH = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch"
CASES = TORCH / "cases"
STEPS = 3

RUNS: dict[str, tuple[Path, tuple[str, ...]]] = {
    "baseline": (TORCH / "baseline.yaml", ()),
    "baseline_again": (TORCH / "baseline.yaml", ()),
    "seed_2": (TORCH / "baseline.yaml", ("seed=2",)),
    "zero_entropy_loss": (TORCH / "zero_entropy_loss.yaml", ()),
    "zero_att_loss_simplified": (TORCH / "zero_att_loss_simplified.yaml", ()),
    "code_a": (CASES / "code_change" / "a" / "code_change.yaml", ()),
    "code_b": (CASES / "code_change" / "b" / "code_change.yaml", ()),
    "shuffle_1": (CASES / "unseeded_shuffle.yaml", ()),
    "shuffle_2": (CASES / "unseeded_shuffle.yaml", ()),
    "lr_change": (CASES / "lr_change.yaml", ()),
    "zero_weight_dropout": (CASES / "zero_weight_dropout.yaml", ()),
    "summed_ce": (CASES / "summed_ce.yaml", ()),
}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    folder = tmp_path_factory.mktemp("cause-traces")
    jobs = []
    for name, (path, overrides) in RUNS.items():
        config = load_config(path, overrides=overrides, steps=STEPS, values="first")
        jobs.append((config, folder / f"{name}.trace"))
    results = record_all(jobs)
    assert all(result.ok for result in results), [result.failure_line() for result in results if not result.ok]
    return {name: Trace(path) for name, (_, path) in zip(RUNS, jobs)}


def _with_cause(comparison: Comparison, cause: str) -> list[Divergence]:
    return [divergence for divergence in comparison.walk() if divergence.cause == cause]


def _causes(comparison: Comparison) -> set[str]:
    return {divergence.cause for divergence in comparison.walk() if divergence.cause}


def test_baseline_against_itself_is_identical(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["baseline_again"])
    assert comparison.identical, [d.explanation for d in comparison.walk()][:5]
    assert comparison.first_divergence is None
    assert comparison.category_counts["gradients"]["compared"] > 0
    assert all(counts["diverged"] == 0 for counts in comparison.category_counts.values())


def test_zero_weighted_entropy_term_is_named_with_weight_and_op(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["zero_entropy_loss"])
    assert not comparison.identical
    nan = _with_cause(comparison, "nan_zero_weight_term")
    assert nan, "no NaN explanation"
    origin = nan[0]
    assert origin.step == 1
    assert origin.evidence["loss_term"] == "att_entropy_l0"
    assert origin.evidence["loss_weight"] == 0.0
    assert origin.evidence["forward_op"] == "aten::mul"
    assert "att_entropy_l0 with weight 0.0" in origin.explanation
    assert "MulBackward0 (aten::mul of aten::_softmax and aten::_log_softmax" in origin.explanation
    assert "-inf" in origin.explanation
    assert origin.evidence["parameters"] > 0
    # The NaN gradients are its consequences, not separate findings.
    assert any(child.category == "gradients" and child.kind == "nonfinite" for child in origin.children)


def test_zero_weighted_attention_losses_change_graph_and_seed_offsets_without_nan(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["zero_att_loss_simplified"])
    assert not comparison.identical
    causes = _causes(comparison)
    assert {"config_change", "graph_change", "seed_offset_shift"} <= causes
    assert not {"nan_zero_weight_term", "nan_weighted_term"} & causes
    graph = next(d for d in _with_cause(comparison, "graph_change") if d.step == 1)
    assert graph.evidence["ops_added"] > 0 and graph.evidence["ops_removed"] == 0
    assert any("att_loss" in str(group["module"]) for group in graph.evidence["by_group"])
    assert "weight 0.0" in graph.explanation
    # The added ops are named, and whether they feed the model's shared forward pass is said.
    entropy = next(group for group in graph.evidence["by_group"] if group["loss_term"] == "att_l0")
    assert entropy["ops"]["added"] and all(name.startswith("aten::") for name in entropy["ops"]["added"])
    assert graph.evidence["feeds_shared"] == 0
    assert "None of them feeds the model's shared forward pass" in graph.explanation
    assert "aten::" in graph.explanation
    shift = _with_cause(comparison, "seed_offset_shift")[0]
    assert shift.evidence["shift"] == 132
    assert shift.evidence["drawn_by"][0]["module"] == "decoder.layers.0.att_loss.head_gate"
    assert "132 more random values were drawn before it in run B" in shift.explanation
    assert "decoder.layers.0.att_loss.head_gate" in shift.explanation


def test_seed_override_is_the_first_divergence_and_the_rest_its_consequences(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["seed_2"])
    assert len(comparison.divergences) == 1
    first = comparison.first_divergence
    assert first is not None and first.cause == "config_change"
    assert first.evidence == {"seed": {"a": 0, "b": 2}}
    consequences = {child.category for child in first.children}
    assert {"initialisation", "gradients", "parameters"} <= consequences


def test_helper_module_with_other_source_is_a_code_change_first(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["code_a"], traces["code_b"])
    first = comparison.first_divergence
    assert first is not None and first.cause == "code_change"
    assert "helper_ops" in first.explanation
    assert [m["module"] for m in first.evidence["modules"]] == ["helper_ops"]
    assert not any(d.category == "config" for d in comparison.walk())


def test_unseeded_shuffle_is_nondeterminism_in_the_data_of_step_1(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["shuffle_1"], traces["shuffle_2"])
    first = comparison.first_divergence
    assert first is not None
    assert (first.cause, first.category, first.step) == ("nondeterminism", "data", 1)
    assert "Same config, different results" in first.explanation
    assert "seed the data order" in first.explanation
    assert "deterministic_algorithms" in first.evidence["determinism_settings"]
    assert len(comparison.divergences) == 1, "everything later is a consequence of the first divergence"


def test_ignoring_a_config_change_does_not_make_it_nondeterminism(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["zero_att_loss_simplified"], ignore=("config",))
    assert not any(d.category == "config" for d in comparison.walk())
    assert not _with_cause(comparison, "nondeterminism"), "the configs differ: that is not 'same config'"
    assert comparison.first_divergence is not None and comparison.first_divergence.cause == "graph_change"


def test_learning_rate_change_at_step_2(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["lr_change"])
    lr = [d for d in _with_cause(comparison, "hyperparameter_change") if d.evidence["hyperparameter"] == "lr"]
    assert len(lr) == 1
    assert lr[0].step == 2
    assert (lr[0].evidence["a"], lr[0].evidence["b"]) == (0.001, 0.0005)
    assert "Learning rate of param group 0 differs from step 2" in lr[0].explanation
    # Step 1 is untouched: the same gradients and parameters.
    assert not [d for d in comparison.walk() if d.step == 1 and d.category in ("gradients", "parameters")]


def test_dropout_in_zero_weighted_branch_shifts_the_random_stream(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["zero_weight_dropout"])
    shift = _with_cause(comparison, "random_stream_shift")
    assert shift
    assert shift[0].step == 1 and shift[0].kind == "added"
    assert shift[0].evidence["loss_weight"] == 0.0
    assert shift[0].evidence["first_shifted"]
    assert "draws" in shift[0].explanation and "in run B only" in shift[0].explanation
    # No parameters were added: initial values are the same, so it is not a seed-offset shift.
    assert "seed_offset_shift" not in _causes(comparison)


def test_reordered_sum_is_floating_point_reordering_only(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["summed_ce"])
    reordering = _with_cause(comparison, "fp_reordering")
    assert reordering, [d.explanation for d in comparison.walk() if d.cause]
    assert reordering[0].evidence["max_ulp"] <= 16
    assert "graph_change" in _causes(comparison)


def test_tolerance_makes_the_reordering_pass(traces: dict[str, Trace]) -> None:
    bitwise = compare_traces(traces["baseline"], traces["summed_ce"], ignore=("config", "code", "graph"))
    assert not bitwise.identical
    loose = compare_traces(traces["baseline"], traces["summed_ce"], atol=1e-5, ignore=("config", "code", "graph"))
    assert loose.identical, [d.explanation for d in loose.walk()][:3]


def test_check_compares_run_one_with_each_other_run(traces: dict[str, Trace]) -> None:
    results = compare_check([traces["baseline"], traces["baseline_again"], traces["seed_2"]])
    assert [result.identical for result in results] == [True, False]


def test_every_divergence_appears_once_and_is_explained(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["baseline"], traces["zero_entropy_loss"])
    seen = [id(d) for d in comparison.walk()]
    assert len(seen) == len(set(seen))
    counted = sum(counts["diverged"] for counts in comparison.category_counts.values())
    graph_groups = sum(len(d.evidence.get("by_group") or []) for d in comparison.walk() if "opcodes" in d.evidence)
    summaries = [d for d in comparison.walk() if d.cause in ("config_change", "graph_change") and d.step is None]
    assert len(seen) == counted + graph_groups + len(summaries)
    assert all(d.explanation for d in comparison.walk())


def test_comparison_is_deterministic(traces: dict[str, Trace]) -> None:
    first = compare_traces(traces["baseline"], traces["zero_att_loss_simplified"]).to_dict()
    again = compare_traces(traces["baseline"], traces["zero_att_loss_simplified"]).to_dict()
    assert first == again


@pytest.mark.parametrize("pair", [("baseline", "zero_entropy_loss"), ("code_a", "code_b"), ("shuffle_1", "shuffle_2")])
def test_counts_agree_table_tree_and_text(traces: dict[str, Trace], pair: tuple[str, str]) -> None:
    """Issue 20: the category table, the tree and the text's consequences count the same items, and no
    category has diverged more than it compared."""
    from repro_audit.audit.divergence import count_diverged
    from repro_audit.reports.text import render_text

    comparison = compare_traces(traces[pair[0]], traces[pair[1]])
    counts = comparison.category_counts
    assert all(n["diverged"] <= n["compared"] for n in counts.values()), counts
    assert dict(count_diverged(comparison.walk())) == {c: n["diverged"] for c, n in counts.items() if n["diverged"]}
    lines = render_text(comparison).splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("Consequences:"))
    end = next(index for index in range(start + 1, len(lines)) if lines[index].startswith("  ["))
    header = " ".join(line.strip() for line in lines[start:end])
    told = {category: int(number) for category, number in
            re.findall(r"(\w+) (\d+)", header.split("(", 1)[1].split(")", 1)[0])}
    first = comparison.first_divergence
    assert first is not None
    elsewhere = count_diverged(d for root in comparison.divergences[1:] for d in root.walk())
    expected = {c: n["diverged"] - (c == first.category and first.counted) - elsewhere[c] for c, n in counts.items()}
    assert told == {c: n for c, n in expected.items() if n}, header
    table = lines[lines.index("Categories:") + 2:]
    for row in table[:len(counts)]:
        category, compared, diverged = row.split()[:3]
        assert (int(compared), int(diverged)) == (counts[category]["compared"], counts[category]["diverged"])
    if pair[0] == "baseline":  # a config change: the root is a summary, the rest its consequences, all of them
        assert not first.counted and sum(told.values()) == sum(n["diverged"] for n in counts.values())
    else:
        assert "the table also counts the first divergence itself" in header or not first.counted
    from repro_audit.reports.html.tree import build_tree, timeline

    tree = build_tree(comparison)  # the HTML's "N divergences" and its timeline count the same items
    assert tree.total == sum(n["diverged"] for n in counts.values())
    cells = [cell for row in timeline(comparison, tree)["rows"] for cell in [row["run"], *row["steps"]] if cell]
    assert sum(cell["roots"] + cell["consequences"] for cell in cells) == tree.total

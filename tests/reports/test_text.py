"""The terminal report: verdict first, the first divergence and why, consequences, categories, caps.

Comparisons are built by hand the way the differ and the explanation rules build them: a config change
whose consequences are a new module, a seed-offset shift, another op graph and different gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from repro_audit.audit.divergence import Comparison, Divergence, RunInfo, count_diverged
from repro_audit.reports.text import render_text

KEY = "loss.terms.att_entropy_l0.weight"
ENTROPY = "decoder.layers.0.cross_attn.entropy"
CONFIG_EXPLANATION = f"The configs differ in 1 key: {KEY} is not set in run A and 0.0 in run B."
SHIFT_EXPLANATION = (f"Parameter decoder.out.weight got other initial values because 1024 more random values were "
                     f"drawn before it in run B (183040 vs 184064), by {ENTROPY} (1024 values, only in run B); "
                     f"2 tensors created after it are shifted as well.")
GRAPH_EXPLANATION = (f"at step 1 run B runs 14 ops that run A does not and leaves out 0 (212 ops in A, 226 in B): "
                     f"+14 in {ENTROPY}, loss term att_entropy_l0.")
PARAMETERS = ["decoder.out.weight", "decoder.out.bias", "decoder.norm.weight", "decoder.norm.bias"]
STEPS = 3


def value_evidence(step: int, index: int) -> dict[str, Any]:
    """What values.array_evidence reports for a tensor whose values all moved a little."""
    return {"compared_by": "values", "numel": 1024, "mismatched": 1000 + index, "max_abs_error": 0.0123 * (step + 1),
            "max_rel_error": 0.5, "median_abs_error": 0.001, "max_ulp": 81920 + index, "nan_a": 0, "nan_b": 0,
            "inf_a": 0, "inf_b": 0, "nonfinite_mismatch": 0, "first_indices": [[0, 0], [0, 1]],
            "passes_at_atol": 0.0123 * (step + 1)}


def per_step(category: str) -> list[Divergence]:
    return [Divergence(category, name, "changed", step=step, order=index, evidence=value_evidence(step, index))
            for step in range(1, STEPS + 1) for index, name in enumerate(PARAMETERS)]


def seed_offset_shift() -> Divergence:
    shifted = [Divergence("initialisation", name, "changed", order=20 + index,
                          explanation=f"initial values of {name} differ (drawn from seed offset "
                                      f"{183040 + 32 * index} in run A and {184064 + 32 * index} in run B).",
                          evidence={**value_evidence(0, index),
                                    "seed_offset": {"a": 183040 + 32 * index, "b": 184064 + 32 * index},
                                    "creation_index": {"a": 20 + index, "b": 21 + index}})
               for index, name in ((1, "decoder.out.bias"), (2, "decoder.norm.weight"))]
    return Divergence("initialisation", "decoder.out.weight", "changed", cause="seed_offset_shift", order=20,
                      explanation=SHIFT_EXPLANATION, children=shifted,
                      evidence={**value_evidence(0, 0), "seed_offset": {"a": 183040, "b": 184064},
                                "creation_index": {"a": 20, "b": 21}, "shift": 1024, "shifted_tensors": 3})


def config_comparison() -> Comparison:
    """A zero-weighted loss term added in run B, and everything that follows from it."""
    config_key = Divergence("config", KEY, "added", evidence={"a": None, "b": 0.0, "key": KEY},
                            explanation=f"{KEY} is not set in run A and 0.0 in run B.")
    module = Divergence("graph", f"module {ENTROPY}", "added", order=7,
                        explanation=f"module {ENTROPY} (Entropy, 0 parameters) exists only in run B.",
                        evidence={"module": ENTROPY, "type": "Entropy", "parameters": 0})
    module_tree = Divergence("graph", "module tree", "changed", cause="graph_change", order=-1, children=[module],
                             counted=False,
                             explanation=f"The model is built differently: run B has 1 modules run A lacks ({ENTROPY}).",
                             evidence={"added": [ENTROPY], "removed": []})
    op_graph = Divergence(
        "graph", "op graph at step 1", "changed", step=1, cause="graph_change", explanation=GRAPH_EXPLANATION,
        evidence={"graph_step": 1, "opcodes": [["equal", 0, 180, 0, 180], ["insert", 180, 180, 180, 194],
                                               ["equal", 180, 212, 194, 226]],
                  "ops_added": 14, "ops_removed": 0, "counts": {"a": 212, "b": 226},
                  "by_group": [{"module": ENTROPY, "loss_term": "att_entropy_l0", "added": 14, "removed": 0}]})
    loss = Divergence("loss_terms", "total", "changed", step=1,
                      evidence={"a": 4.340999841690063, "b": 4.3410000801086426, "weight": 1.0})
    root = Divergence("config", "config change", "changed", cause="config_change", order=-1, counted=False,
                      explanation=CONFIG_EXPLANATION, evidence={KEY: {"a": None, "b": 0.0}},
                      children=[config_key, module_tree, seed_offset_shift(), op_graph, loss]
                      + per_step("gradients") + per_step("optimizer") + per_step("parameters"))
    counts = {"environment": {"compared": 41, "diverged": 0}, "code": {"compared": 12, "diverged": 0},
              "config": {"compared": 30, "diverged": 1}, "graph": {"compared": 4, "diverged": 2},
              "initialisation": {"compared": 58, "diverged": 3}, "random_draws": {"compared": 36, "diverged": 0},
              "loss_terms": {"compared": 6, "diverged": 1}, "gradients": {"compared": 174, "diverged": 12},
              "optimizer": {"compared": 174, "diverged": 12}, "parameters": {"compared": 174, "diverged": 12}}
    return Comparison(run_a=RunInfo("baseline", "/tmp/a.trace", "torch", True, STEPS),
                      run_b=RunInfo("entropy", "/tmp/b.trace", "torch", True, STEPS),
                      divergences=[root], category_counts=counts, notes=["not compared (--ignore): health"])


def identical_comparison(**tolerance: float) -> Comparison:
    return Comparison(run_a=RunInfo("baseline run 1", "/tmp/1.trace", "torch", True, 5),
                      run_b=RunInfo("baseline run 2", "/tmp/2.trace", "torch", True, 5),
                      tolerance={"rtol": 0.0, "atol": 0.0, **tolerance},
                      category_counts={"config": {"compared": 30, "diverged": 0},
                                       "gradients": {"compared": 290, "diverged": 0}})


def nan_comparison() -> Comparison:
    """Run B stopped early; its gradient went NaN, with hostile evidence beside it."""
    evidence = {"a": np.float32(4.341), "b": float("nan"), "nan_a": 0, "nan_b": 1024, "inf_a": 0, "inf_b": 0,
                "mismatched": 1024, "numel": 1024, "huge": "x" * 5000, "values": np.arange(100, dtype=np.float32),
                "evil\x1b[31mkey": "line one\nline two", "loss_term": "att_entropy_l0", "loss_weight": 0.0,
                "node": "MulBackward0", "module": ENTROPY, "parameters": 58}
    gradient = Divergence("gradients", "decoder.out.weight\x1b[2J", "nonfinite", step=2, evidence=evidence,
                          explanation="Gradients become NaN/Inf in one run only from step 2. " * 60)
    return Comparison(run_a=RunInfo("baseline", "/tmp/a.trace", "torch", True, 3),
                      run_b=RunInfo("nan", "/tmp/b.trace", "torch", False, 2, error="RuntimeError at step 3"),
                      divergences=[gradient], partial=True, tolerance={"rtol": 1e-05, "atol": 1e-08},
                      notes=["run B (nan) is incomplete: crash at step 3", "run A recorded 3 steps and run B 2"])


def paragraph(lines: list[str], start: int, indent: int = 4) -> str:
    """Line `start` and the lines after it indented by `indent` or more, as one line: what was wrapped."""
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * indent):
        end += 1
    return " ".join(line.strip() for line in lines[start:end])


def test_verdict_leads_with_the_change_and_its_mechanisms_then_why_then_what_changed() -> None:
    lines = render_text(config_comparison()).splitlines()
    assert lines[:2] == [("DIVERGED: baseline vs entropy: the config (1 key) -> seed-offset shift of shared parameters; "
                          "changed"), "  graph"], "wrapped at 100 columns, the rest indented"
    why = lines[lines.index("Why:") + 1:lines.index("What you changed:")]
    assert why[0].startswith("  1. seed-offset shift of shared parameters (")
    assert any(line.startswith("  2. changed graph (") for line in why)
    assert "(and 1 more: op graph at step 1)" in " ".join(why)
    assert all(len(line) <= 100 for line in why)
    block = lines[lines.index("What you changed:"):]
    assert block[1:6] == ["  category:    config", "  step:        before training", "  name:        config change",
                          "  kind:        changed", "  cause:       config_change"]
    # Wrapped to about 100 columns, under its label.
    assert block[6] == ("  explanation: The configs differ in 1 key: loss.terms.att_entropy_l0.weight is not set in "
                        "run A and")
    assert block[7] == "               0.0 in run B."
    assert block[8:10] == ["  evidence:", "    loss.terms.att_entropy_l0.weight: {a: None, b: 0.0}"]
    assert all(len(line) <= 100 for line in block[:10])


def test_other_causes_are_explained_nodes_below_and_beside_the_first_most_telling_first() -> None:
    lines = render_text(config_comparison()).splitlines()
    start = lines.index("Other causes:")
    # Each mechanism's first instance is told under "Why:"; the other instances follow here, whole.
    assert paragraph(lines, start + 1) == f"[step 1] graph op graph at step 1: {GRAPH_EXPLANATION}"
    assert lines[start + 1].startswith("  [step 1]") and lines[start + 2].startswith("    ")
    assert lines[start + 3].startswith("    ") and lines[start + 4] == ""
    why = "\n".join(lines[lines.index("Why:"):start])
    assert "decoder.out.weight" in why and "The model is built differently" in why


def test_consequences_count_the_items_the_table_counts_and_are_capped() -> None:
    comparison = config_comparison()
    lines = render_text(comparison, max_consequences=2).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Consequences:"))
    # The summaries (config change, module tree) are not items: neither listed nor counted, as in the table.
    assert lines[start] == ("Consequences: 43 (config 1, graph 2, initialisation 3, loss_terms 1, gradients 12, "
                            "optimizer 12,")
    assert lines[start + 1] == "  parameters 12)"
    table = {c: counts["diverged"] for c, counts in comparison.category_counts.items() if counts["diverged"]}
    assert dict(count_diverged(comparison.walk())) == table
    assert lines[start + 2:start + 7] == [
        f"  [before training] config {KEY}: {KEY} is not",
        "    set in run A and 0.0 in run B.",
        f"  [before training] graph module {ENTROPY}: module",
        f"    {ENTROPY} (Entropy, 0 parameters) exists only in run B.",
        "  ... 41 more not shown"]


def test_consequences_say_what_else_the_table_counts() -> None:
    first = Divergence("random_draws", "aten::bernoulli_ in encoder.dropout", "changed", step=1,
                       children=per_step("gradients")[:2])
    other = Divergence("environment", "threads", "changed", explanation="threads is 1 in run A and 2 in run B.")
    comparison = Comparison(RunInfo("a", "a", "torch", True, 1), RunInfo("b", "b", "torch", True, 1),
                            divergences=[first, other],
                            category_counts={"environment": {"compared": 9, "diverged": 1},
                                             "random_draws": {"compared": 3, "diverged": 1},
                                             "gradients": {"compared": 4, "diverged": 2}})
    lines = render_text(comparison).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Consequences:"))
    assert lines[start:start + 2] == [("Consequences: 2 (gradients 2); the table also counts the first divergence "
                                       "itself, 1 under other"), "  roots"]


def test_unexplained_consequences_show_kind_values_and_statistics() -> None:
    lines = render_text(config_comparison(), max_consequences=44).splitlines()
    assert "  [step 1] loss_terms total: changed, 4.340999841690063 -> 4.341000080108643" in lines
    assert (f"  [step 2] gradients decoder.out.bias: changed, 1001 of 1024 values differ, "
            f"max abs error {0.0123 * 3!r}") in lines
    assert not any(line.startswith("  ... ") and "more not shown" in line for line in lines)


def test_category_table_in_causal_order_with_first_step_from_the_tree() -> None:
    text = render_text(config_comparison())
    table = text.split("Categories:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table == [
        "  category        compared  diverged  first step diverged",
        "  environment           41         0  -",
        "  code                  12         0  -",
        "  config                30         1  before training",
        "  graph                  4         2  before training",
        "  initialisation        58         3  before training",
        "  random_draws          36         0  -",
        "  loss_terms             6         1  step 1",
        "  gradients            174        12  step 1",
        "  optimizer            174        12  step 1",
        "  parameters           174        12  step 1",
    ]
    assert text.endswith("\nNotes:\n  - not compared (--ignore): health")


def test_rows_and_causes_are_capped_and_the_cut_is_said() -> None:
    roots = [Divergence("environment", f"env var VAR_{index}", "changed", explanation=f"VAR_{index} differs.")
             for index in range(30)]
    counts = {f"custom_{index:02d}": {"compared": 1, "diverged": 1} for index in range(25)}
    comparison = Comparison(RunInfo("a", "a", "torch", True, 1), RunInfo("b", "b", "torch", True, 1),
                            divergences=roots, category_counts=counts)
    lines = render_text(comparison, max_rows=4).splitlines()
    start = lines.index("Other causes:")
    assert lines[start + 1:start + 6] == [f"  [before training] environment env var VAR_{i}: VAR_{i} differs."
                                          for i in range(1, 5)] + ["  ... 25 more not shown"]
    assert lines[-6:] == ["  category     compared  diverged  first step diverged",
                          "  environment         -         -  before training",
                          "  custom_00           1         1  -",
                          "  custom_01           1         1  -",
                          "  custom_02           1         1  -",
                          "  ... 22 more categories not shown"]


def test_identical_bitwise_and_within_tolerance() -> None:
    lines = render_text(identical_comparison()).splitlines()
    assert lines[0] == "IDENTICAL: baseline run 1 and baseline run 2 match bitwise (5 steps compared)"
    assert "First divergence:" not in lines and "Consequences:" not in " ".join(lines)
    assert lines[-3:] == ["  category   compared  diverged  first step diverged",
                          "  config           30         0  -",
                          "  gradients       290         0  -"]
    within = render_text(identical_comparison(rtol=1e-05, atol=3e-07)).splitlines()[0]
    assert within == ("IDENTICAL: baseline run 1 and baseline run 2 match within rtol=1e-05, atol=3e-07 "
                      "(5 steps compared)")


def test_partial_is_said_under_the_verdict_with_the_notes() -> None:
    lines = render_text(nan_comparison()).splitlines()
    assert lines[0] == ("DIVERGED: baseline vs nan: first divergence at step 2 in gradients "
                        "(at rtol=1e-05, atol=1e-08)")
    assert lines[1:4] == ["PARTIAL: run B (nan) stopped early; only the 2 steps both runs recorded were compared",
                          "  - run B (nan) is incomplete: crash at step 3",
                          "  - run A recorded 3 steps and run B 2"]
    assert "Notes:" not in lines  # listed once, under the verdict
    no_notes = nan_comparison()
    no_notes.notes = []
    assert render_text(no_notes).splitlines()[1:3] == [("PARTIAL: run B (nan) stopped early (RuntimeError at step 3); "
                                                        "only the 2 steps both runs recorded"), "  were compared"]


def test_values_exact_nan_as_nan_and_hostile_evidence_cut_and_escaped() -> None:
    text = render_text(nan_comparison())
    lines = text.splitlines()
    assert "  run A:       4.341000080108643  (baseline)" in lines  # float32 4.341 exactly, not 4.341
    assert "  run B:       nan  (nan)" in lines
    evidence = lines[lines.index("  evidence:") + 1:]
    # NaN counts come as a pair even when one side is 0; zero Inf counts go behind the rest.
    assert evidence[:6] == ["    mismatched: 1024", "    numel: 1024", "    nan_a: 0", "    nan_b: 1024",
                            "    loss_term: att_entropy_l0", "    loss_weight: 0.0"]
    assert evidence[6:8] == [("    ... 8 more evidence keys not shown (node, module, parameters, evil\\x1b[31mkey, "
                              "huge, ...); the"), "        JSON report has all"]
    assert "\x1b" not in text and "line one\nline two" not in text
    assert "  name:        decoder.out.weight\\x1b[2J" in lines
    explanation = [line for line in lines if "Gradients become NaN/Inf" in line]
    assert explanation and all(len(line) <= 100 for line in explanation)
    # Wrapped whole up to 2000 characters; only a hostile document's 3240 are cut, saying so.
    assert "... (1240 more characters cut)" in text.replace("\n               ", " ")


def test_long_values_are_cut_and_say_so() -> None:
    comparison = nan_comparison()
    first = comparison.divergences[0]
    first.evidence = {"a": "x" * 5000, "b": list(range(1000)), "node": np.arange(1000, dtype=np.float32)}
    lines = render_text(comparison).splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("  run A:"))
    run_a = lines[start] + "".join(line.strip() for line in lines[start + 1:start + 3])
    assert run_a == "  run A:       '" + "x" * 199 + "... (4802 more characters cut)  (baseline)"
    assert lines[start + 1].startswith(" " * 15 + "x") and lines[start + 2].startswith(" " * 15 + "x")
    run_b = next(line for line in lines if line.startswith("  run B:"))
    assert run_b.startswith("  run B:       [0, 1, 2,") and "... 980 more]" in run_b
    start = next(index for index, line in enumerate(lines) if line.startswith("    node: "))
    node = paragraph(lines, start, indent=8)
    assert node.startswith("node: [0.0, 1.0, 2.0,") and lines[start + 1].startswith(" " * 8 + "16.0,")
    assert node.endswith(", 19.0, ... 980 more] (shape (1000,), float32)")


def test_color_only_when_asked() -> None:
    plain = render_text(config_comparison())
    colored = render_text(config_comparison(), color=True)
    assert "\x1b[" not in plain
    assert colored.startswith("\x1b[1;31mDIVERGED\x1b[0m: baseline vs entropy")
    assert "\x1b[1;32mIDENTICAL\x1b[0m" in render_text(identical_comparison(), color=True)
    assert "\x1b[1;33mPARTIAL\x1b[0m" in render_text(nan_comparison(), color=True)
    assert colored.replace("\x1b[1;31m", "").replace("\x1b[1m", "").replace("\x1b[0m", "") == plain


def test_no_line_wider_than_the_width_and_every_sentence_whole() -> None:
    long_cause = Divergence("nan_provenance", "MulBackward0 in " + "deep." * 40 + "module", "nonfinite", step=1,
                            cause="nan_zero_weight_term", explanation="Loss term att with weight 0.0 sends NaN. " * 8)
    comparison = config_comparison()
    comparison.divergences[0].children.append(long_cause)
    for width in (20, 60, 100, 240):
        for color in (False, True):
            text = render_text(comparison, width=width, color=color)
            plain = text.replace("\x1b[1;31m", "").replace("\x1b[1m", "").replace("\x1b[0m", "")
            assert max(len(line) for line in plain.splitlines()) <= max(width, 40), width
            assert "characters cut" not in text
            assert " ".join(("Loss term att with weight 0.0 sends NaN. " * 8).split()) in " ".join(plain.split())
    assert render_text(nan_comparison(), width=50).splitlines()[0] == "DIVERGED: baseline vs nan: first divergence at"


def test_deterministic() -> None:
    assert render_text(config_comparison()) == render_text(config_comparison())
    assert render_text(nan_comparison()) == render_text(nan_comparison())

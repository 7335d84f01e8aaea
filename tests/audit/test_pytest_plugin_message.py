"""The failure message's wording and bounds (reports/pytest_message.py), on comparison trees built by hand.

The message only walks a Comparison, so its rules are checked here without a run: at most 12 lines at
every verbosity, whatever the tree holds; the verdict first; the evidence that tells first. The inner pytest
sessions (test_pytest_plugin.py, test_pytest_plugin_golden.py) check it on real runs.
"""

from __future__ import annotations

import math

import pytest

from repro_audit.audit.divergence import Comparison, Divergence, RunInfo
from repro_audit.audit.mechanisms import MECHANISM_TITLES
from repro_audit.reports.pytest_message import MAX_LINES, cause_line, evidence_text, failure_message


def comparison(*roots: Divergence, steps: int = 2) -> Comparison:
    runs = [RunInfo(label=label, trace_path=None, framework="torch", complete=True, steps_recorded=steps)
            for label in ("a", "b")]
    return Comparison(run_a=runs[0], run_b=runs[1], divergences=list(roots))


def config_change(*consequences: Divergence) -> Divergence:
    keys = [Divergence("config", "seed", "changed", evidence={"a": 0, "b": 2}),
            Divergence("config", "params.width", "changed", evidence={"a": 8, "b": 16})]
    return Divergence("config", "config change", "changed", cause="config_change", order=-1,
                      explanation="The configs differ in 2 keys: seed is 0 in run A and 2 in run B, ...",
                      children=keys + list(consequences))


def every_mechanism() -> list[Divergence]:
    """One divergence per known mechanism, each with a sentence far longer than a line."""
    return [Divergence("parameters", f"layer{index}.weight", "changed", step=1, cause=cause,
                       explanation=f"{cause} explained at length: " + "word " * 200,
                       evidence={"max_abs_error": 0.5, "nan_a": 0, "nan_b": 0, "changes_shared": True})
            for index, cause in enumerate(MECHANISM_TITLES)]


@pytest.mark.parametrize("verbosity", [-1, 0, 1, 2, 5])
def test_message_stays_within_twelve_lines_at_every_verbosity(verbosity: int) -> None:
    result = comparison(config_change(*every_mechanism()))
    message = failure_message(result, verdict="not identical", runs="'a' (A) vs 'b' (B)", report="reports/t.html",
                              traces="/tmp/traces", verbosity=verbosity)
    lines = message.splitlines()
    assert len(lines) <= MAX_LINES, message
    assert lines[0].startswith("not identical: the config (2 keys) -> NaN through a zero-weighted loss term; "), lines
    assert lines[1] == "  runs: 'a' (A) vs 'b' (B), bitwise, 2 steps compared"
    # Where to read on is never what gets cut.
    assert lines[-2:] == ["  HTML report: reports/t.html", "  traces kept in /tmp/traces"]
    assert any("more mechanisms in the full report" in line for line in lines), message


def test_verbose_message_shows_more_of_each_sentence_in_no_more_lines() -> None:
    result = comparison(config_change(*every_mechanism()))
    short, detailed = (failure_message(result, verdict="not identical", runs="r", verbosity=level) for level in (0, 1))
    assert max(map(len, short.splitlines()[1:])) <= 120 < max(map(len, detailed.splitlines()[1:]))
    assert len(detailed.splitlines()) <= MAX_LINES


def test_without_a_changed_input_the_verdict_is_where_the_runs_first_differ() -> None:
    first = Divergence("gradients", "fc.weight", "changed", step=3, cause="nondeterminism",
                       explanation="Same config, different results.",
                       evidence={"max_abs_error": 2.9802322387695312e-08, "max_rel_error": 1.1920928955078125e-07,
                                 "mismatched": 3, "numel": 64, "nan_a": 0, "nan_b": 0, "inf_a": 0, "inf_b": 0})
    message = failure_message(comparison(first), verdict="not deterministic", runs="'t' run 2 of 2 vs run 1",
                              hint="HTML report: rerun with --repro-audit-report DIR")
    assert message.splitlines() == [
        "not deterministic: run-to-run nondeterminism at step 3 in gradients fc.weight",
        "  runs: 't' run 2 of 2 vs run 1, bitwise, 2 steps compared",
        "  first: at step 3 in gradients fc.weight: Same config, different results.",
        "  evidence: 3 of 64 values differ, max |A-B| 2.98e-08, max rel 1.192e-07",
        "  HTML report: rerun with --repro-audit-report DIR",
    ]


def test_a_changed_input_without_a_named_mechanism_leads_to_its_first_effect() -> None:
    effect = Divergence("initialisation", "embed.weight", "changed", order=3,
                        explanation="initial values of embed.weight differ.",
                        evidence={"norm": {"a": 46.11983760901097, "b": 45.198784270014436}, "nan_a": 0, "nan_b": 0})
    result = comparison(config_change(effect))
    assert cause_line(result) == "the config (2 keys) -> initialisation embed.weight changed before training"
    lines = failure_message(result, verdict="not identical", runs="r").splitlines()
    assert lines[2].startswith("  changed: The configs differ in 2 keys")
    assert lines[3:] == [("  first effect: before training in initialisation embed.weight: initial values of "
                          "embed.weight differ."), "  evidence: norm 46.12 vs 45.2"]


def test_evidence_puts_errors_and_norms_before_nonfinite_counts_and_leaves_out_zero_counts() -> None:
    assert evidence_text({"nan_a": 0, "nan_b": 1632, "inf_a": 0, "inf_b": 0, "norm": {"a": 3.5, "b": math.nan},
                          "max_abs": {"a": 0.25, "b": 0.25}}) == "norm 3.5 vs NaN, max_abs 0.25 in both, NaN 0 vs 1632"
    # Close numbers get the digits that tell them apart; a weight stays a float.
    assert evidence_text({"norm": {"a": 55.42561964790734, "b": 55.42561751431608}, "loss_term": "aux",
                          "loss_weight": 0.0}) == "norm 55.4256196 vs 55.4256175, loss term aux, weight 0.0"
    assert evidence_text({"a": "relu", "b": "tanh"}) == "run A 'relu' vs run B 'tanh'"
    assert evidence_text({"compared_by": "summary", "nan_a": 0, "nan_b": 0}) == ""


def test_a_hostile_name_cannot_add_lines() -> None:
    first = Divergence("parameters", "w\nE   injected\x1b[31m", "changed", step=1, explanation="line one\nline two")
    message = failure_message(comparison(first), verdict="not identical", runs="r")
    assert len(message.splitlines()) == 3 and "\x1b" not in message and "\\x1b" in message, message

"""The first screen of the report: the verdict as the chain "what you changed -> mechanisms", each mechanism
with its sentence, and the first divergence; the page's <title> says the same in one line.

The chain, the mechanisms and their order come from the Comparison (audit/mechanisms.py); this lays them out
as reports/text.py does in the terminal.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.divergence import Comparison
from repro_audit.audit.mechanisms import chain, input_summary
from repro_audit.reports.html.tree import TreeView, format_value, node_fields

MAX_INSTANCE_NAMES = 3  # other divergences a mechanism was named on, listed by name; the rest counted
SHARED_WORDS = {True: "changes numbers both runs share", False: "changes no shared number",
                None: "effect on shared numbers not known"}


def verdict(comparison: Comparison, tree: TreeView) -> dict[str, Any]:
    """Identical or not; the chain or the first divergence's place as the headline; mechanisms; counts."""
    first = comparison.first_divergence
    inputs = comparison.changed_inputs
    mechanisms = [_mechanism(mechanism, tree) for mechanism in comparison.mechanisms]
    steps = min(comparison.run_a.steps_recorded, comparison.run_b.steps_recorded)
    return {
        "identical": comparison.identical,
        "partial": comparison.partial,
        "headline": headline(comparison),
        "chain": bool(inputs and mechanisms),
        "inputs": [{"summary": input_summary(root), "anchor": tree.anchors.get(id(root))} for root in inputs],
        "mechanisms": mechanisms,
        "first": {**node_fields(first), "anchor": tree.anchors.get(id(first))} if first else None,
        # The first divergence's sentence, when a mechanism above already says it.
        "first_told": bool(first and any(m.instances[0] is first for m in comparison.mechanisms)),
        # A changed input whose evidence is key: A, B for every key says in a table what its sentence says.
        "first_tabled": bool(first and inputs and first is inputs[0] and node_fields(first)["evidence"]
                             and all("value" not in row for row in node_fields(first)["evidence"])),
        "roots": len(comparison.divergences),
        "total": tree.total,
        "steps": steps,
        "tolerance": tolerance_text(comparison),
        "notes": list(comparison.notes),
        "ignored": list(comparison.ignored),
    }


def headline(comparison: Comparison) -> str:
    """The chain `the config (3 keys) -> NaN through a zero-weighted loss term; ...` when an input changed
    (repro_audit.audit.mechanisms.chain, as the terminal says it), else where the first divergence is; empty when the
    runs are identical."""
    first = comparison.first_divergence
    if first is None:
        return ""
    told = chain(comparison)
    if told:
        return told
    mechanisms = comparison.mechanisms
    where = "before training" if first.step is None else f"at step {first.step}"
    named = f": {mechanisms[0].title}" if mechanisms else ""
    return f"first divergence {where} in {first.category}{named}"


def page_title(comparison: Comparison) -> str:
    """The <title>, as the terminal's first line: the verdict first, so a tab or a history says what
    happened."""
    runs = f"{comparison.run_a.label} vs {comparison.run_b.label}"
    if comparison.identical:
        return f"IDENTICAL: {runs} - repro-audit"
    return f"DIVERGED: {runs}: {headline(comparison)} - repro-audit"


def tolerance_text(comparison: Comparison) -> str:
    tolerance = comparison.tolerance
    if not any(value for value in tolerance.values()):
        return "bitwise"
    return ", ".join(f"{key}={format_value(value)}" for key, value in sorted(tolerance.items()))


def _mechanism(mechanism: Any, tree: TreeView) -> dict[str, Any]:
    first, more = mechanism.instances[0], mechanism.instances[1:]
    return {
        "cause": mechanism.cause,
        "title": mechanism.title,
        "shared": SHARED_WORDS[mechanism.changes_shared],
        "changes_shared": mechanism.changes_shared,
        "explanation": mechanism.explanation,
        "anchor": tree.anchors.get(id(first)),
        "more": [divergence.name for divergence in more[:MAX_INSTANCE_NAMES]],
        "more_cut": max(0, len(more) - MAX_INSTANCE_NAMES),
    }

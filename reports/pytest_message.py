"""The failure message of a repro-audit assertion: a few lines in pytest's style, the cause first.

pytest shows the first line in its short summary (`FAILED test_x.py::test - <first line>`), so that line
names the cause: the chain "what you changed -> mechanisms", or where the runs first differ and why. The
lines under it give the mechanisms (or the first divergence) with the evidence that tells most, the proof
when `--verify` ran, and where the full report is. It walks the Comparison and decides nothing.
"""

from __future__ import annotations

import math
from typing import Any

from audit.divergence import Comparison, Divergence
from audit.mechanisms import input_summary

MAX_LINES = 12
LINE_CHARS = {0: 160, 1: 400}  # characters of one line by verbosity (-v shows more of each sentence)
MAX_MECHANISMS = {0: 3, 1: 6}
# Evidence that tells most about a difference, in this order; NaN/Inf counts only where they are not zero.
EVIDENCE_KEYS = ("max_abs_error", "max_rel_error", "max_ulp", "mismatched", "norm", "max_abs", "loss_term",
                 "loss_weight", "shift", "seed_offset")
NONFINITE_KEYS = ("nan_a", "nan_b", "inf_a", "inf_b")
MAX_EVIDENCE = 4


def failure_message(headline: str, comparison: Comparison, *, report: str | None = None, traces: str | None = None,
                    verbose: int = 0) -> str:
    """At most MAX_LINES lines: `cause: headline`, the why, the proof, the report and traces."""
    level = 1 if verbose > 0 else 0
    width = LINE_CHARS[level]
    # The cause leads: pytest's short summary shows as much of this line as the terminal is wide.
    lines = [_cut(f"{_cause(comparison)}: {headline}", width * 2)]
    mechanisms = comparison.mechanisms if comparison.changed_inputs else []
    if mechanisms:
        for index, mechanism in enumerate(mechanisms[:MAX_MECHANISMS[level]], 1):
            lines.append(_cut(f"  {index}. {mechanism.title}: {mechanism.explanation}", width))
        if len(mechanisms) > MAX_MECHANISMS[level]:
            lines.append(f"  ... {len(mechanisms) - MAX_MECHANISMS[level]} more mechanisms in the report")
    elif comparison.first_divergence is not None:
        first = comparison.first_divergence
        lines.append(_cut(f"  first: {_where(first)}: {first.explanation or first.kind}", width))
        evidence = _evidence(first)
        if evidence:
            lines.append(_cut(f"  evidence: {evidence}", width))
    proof = _proof(comparison)
    if proof:
        lines.append(_cut(f"  verified: {proof}", width))
    lines += [text for text in (f"  HTML report: {report}" if report else "",
                                f"  traces kept in {traces}" if traces else "") if text]
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES - 1] + [f"  ... {len(lines) - MAX_LINES + 1} more lines: see the report"]
    return "\n".join(lines)


def _cause(comparison: Comparison) -> str:
    first = comparison.first_divergence
    if first is None:
        return "no divergence"
    inputs, mechanisms = comparison.changed_inputs, comparison.mechanisms
    if inputs and mechanisms:
        changed = " and ".join(input_summary(root) for root in inputs)
        return "; ".join(m.title for m in mechanisms) + f" (after a change to {changed.removeprefix('the ')})"
    if first.step is None and first.explanation:  # a changed input or graph: its sentence says what
        return first.explanation.rstrip(".")
    cause = first.cause.replace("_", " ") if first.cause else "first divergence"
    return f"{cause} {_where(first)}"


def _where(divergence: Divergence) -> str:
    step = "before training" if divergence.step is None else f"at step {divergence.step}"
    return f"{step} in {divergence.category} {divergence.name}"


def _evidence(divergence: Divergence) -> str:
    evidence = divergence.evidence or {}
    shown = [f"{key} {_value(evidence[key])}" for key in EVIDENCE_KEYS if evidence.get(key) not in (None, {}, [])]
    shown += [f"{key} {evidence[key]}" for key in NONFINITE_KEYS if evidence.get(key)]
    if not shown and "a" in evidence and "b" in evidence:
        shown = [f"run A {_value(evidence['a'])}, run B {_value(evidence['b'])}"]
    return ", ".join(shown[:MAX_EVIDENCE])


def _value(value: Any) -> str:
    if isinstance(value, dict) and set(value) >= {"a", "b"}:
        return f"{_value(value['a'])} vs {_value(value['b'])}"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _proof(comparison: Comparison) -> str:
    verification = comparison.verification
    if verification is None:
        return ""
    remains = verification.remains
    together = verification.together
    if together is None or together.kind == "none":
        return f"no intervention applies; {remains}" if remains else ""
    if remains:
        return f"after every intervention, {remains}"
    return "with every mechanism neutralised, run B matches run A on every shared number"


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"

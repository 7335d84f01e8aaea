"""The verification table: intervention -> effect, and what remains after all of them.

Built by audit/verify/run.py, carried in `Comparison.verification`, rendered by every presenter as is: the
sentences are made here, so text, HTML, JSON and the pytest message say the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.mechanisms import MECHANISM_TITLES
from repro_audit.audit.verify.effect import Effect
from repro_audit.audit.verify.plan import Untested

# A row's kind: run B as recorded, one intervention, all of them, all but one, and the changed graph, which
# needs none: it is confirmed by the row that matched.
ROW_KINDS = ("none", "single", "all", "all_but", "graph")


@dataclass
class Row:
    intervention: str
    kind: str
    causes: list[str]
    effect: Effect | None  # None when the intervened run failed
    error: str | None = None
    trace_path: str | None = None

    def summary(self, baseline: Effect | None) -> str:
        """The effect in a few words, against run B as recorded."""
        if self.effect is None:
            return f"run failed: {self.error}"
        if self.effect.equal and self.kind == "graph":
            return ("confirmed without numeric effect: the graphs still differ, yet run B matches run A on every "
                    "shared number (bitwise)")
        if self.effect.equal:
            return "run B matches run A on every shared number (bitwise)"
        if self.effect.first is None:
            return f"unknown: a run stopped early ({self.effect.last_step} steps compared)"
        first = self.effect.first
        where = f"first at step {first.step}, {first.category} {first.name}" if first is not None else ""
        closer = _distance_text(self.effect, baseline) if self.kind != "none" else _distance_text(self.effect, None)
        return f"still differs ({where}){'; ' + closer if closer else ''}"

    def to_dict(self, baseline: Effect | None) -> dict[str, Any]:
        return {"intervention": self.intervention, "kind": self.kind, "causes": list(self.causes),
                "effect": None if self.effect is None else self.effect.to_dict(), "error": self.error,
                "summary": self.summary(baseline), "trace_path": self.trace_path}


@dataclass
class Verification:
    """Each mechanism neutralised in a re-run of run B, alone and together, and what it changed."""

    rows: list[Row] = field(default_factory=list)
    untested: list[Untested] = field(default_factory=list)

    @property
    def baseline(self) -> Effect | None:
        return next((row.effect for row in self.rows if row.kind == "none"), None)

    @property
    def together(self) -> Row | None:
        """The row with every intervention at once (the single one, where there is only one)."""
        return next((row for row in self.rows if row.kind == "all"), None) or \
            next((row for row in self.rows if row.kind == "single"), None)

    @property
    def remains(self) -> str | None:
        """What is left once every intervention is applied, never dropped: None when run B then matches."""
        row = self.together
        if row is None:
            return None
        if row.effect is None:
            return f"unknown: the run with every intervention failed ({row.error})"
        if row.effect.equal:
            return None
        first = row.effect.first
        if first is None:
            return f"unknown: a run stopped early, so only {row.effect.last_step} steps could be compared"
        where = f"{first.category} {first.name} at step {first.step}"
        if row.effect.reordering_only:
            return (f"{where} differs by {first.evidence.get('max_ulp')} ULP (largest |A - B| "
                    f"{_number(first.evidence.get('max_abs_error'))}), all values finite: floating-point reordering "
                    f"of the same computation, not a cause")
        return (f"{where} still differs ({first.explanation or first.kind}): a cause no intervention here "
                f"explains")

    def to_dict(self) -> dict[str, Any]:
        baseline = self.baseline
        return {
            "rows": [row.to_dict(baseline) for row in self.rows],
            "untested": [{"cause": item.cause, "title": MECHANISM_TITLES.get(item.cause, item.cause),
                          "reason": item.reason} for item in self.untested],
            "remains": self.remains,
        }


def _distance_text(effect: Effect, baseline: Effect | None) -> str:
    parts = []
    for label, now, before in (("parameters", effect.parameter_distance,
                                baseline.parameter_distance if baseline else None),
                               ("loss", effect.loss_difference, baseline.loss_difference if baseline else None)):
        if now is None:
            continue
        was = f" (was {_apart(before)})" if before is not None else ""
        parts.append(f"{label} {_apart(now)} at step {effect.last_step}{was}")
    return ", ".join(parts)


def _apart(value: float) -> str:
    """How far apart, where NaN means one run has NaN there and the other not (or both: no agreement)."""
    return "NaN" if math.isnan(value) else f"{value:.3g} apart"


def _number(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "unknown"
    return "NaN" if math.isnan(value) else f"{value:.3g}"

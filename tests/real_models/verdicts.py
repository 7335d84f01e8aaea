"""What the real-model tests ask of a comparison: its causes, one cause by name."""

from __future__ import annotations

from repro_audit.audit.divergence import Comparison, Divergence


def causes(comparison: Comparison) -> list[Divergence]:
    return [d for d in comparison.walk() if d.cause]


def cause_named(comparison: Comparison, cause: str) -> Divergence:
    found = [d for d in causes(comparison) if d.cause == cause]
    assert found, f"no {cause} among {[(d.cause, d.name, d.explanation) for d in causes(comparison)]}"
    return found[0]

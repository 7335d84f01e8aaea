"""Cause 8: run B trains on other batches, because the config or the code changed the data pipeline."""

from __future__ import annotations

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence
from repro_audit.audit.explain.finding import Claims, Finding
from repro_audit.audit.explain.inputs import _named

INPUTS = ("environment", "code", "config")


def data_change(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    """Other batches after a changed input. With the same inputs (`check`) other batches are the data
    pipeline's nondeterminism, which that rule names."""
    if not any(d.category in INPUTS and d.step is None for d in divergences):
        return []
    changed = sorted(claims.free(d for d in divergences if d.category == "data"), key=lambda d: d.sort_key())
    if not changed:
        return []
    first = changed[0]
    steps = sorted({d.step for d in changed if d.step is not None})
    compared = len(context.common_steps)
    names = sorted({d.name for d in changed if d.step == first.step})
    first.cause = "data_change"
    first.explanation = (f"Run B trains on other batches from step {first.step} ({_named(names)} differ; "
                         f"{len(steps)} of the {compared} steps compared): the same model then sees other data.")
    first.evidence.update(steps=steps, changes_shared=True)
    return [Finding(first, changed[1:])]

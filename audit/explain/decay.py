"""A zero gradient is not no gradient: weight decay moves a parameter that a zero-weighted term reaches.

An optimizer updates the parameters that have a gradient and skips those whose gradient is None. A term
weighted 0.0 that reaches a parameter gives it a gradient of zeros: Adam's update of zero moments is zero,
but decoupled weight decay (AdamW, Keras AdamW) and L2 decay added to the gradient (SGD, Adam with
weight_decay) shrink it at every step. So a parameter no other term reaches stays put in one run and decays
in the other: one of the real ways a `0.0 * loss` changes training.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence
from repro_audit.audit.explain.finding import Claims, Finding
from repro_audit.audit.explain.inputs import _named

DECAY_KEYS = ("weight_decay", "decoupled_weight_decay")


def decay_through_zero_gradient(divergences: list[Divergence], context: CompareContext,
                                claims: Claims) -> list[Finding]:
    changed = [d for d in claims.free(divergences) if d.category == "parameters"]
    if not changed:
        return []
    first_step = min(d.step or 0 for d in changed)
    found = _zero_versus_none(context, first_step)
    if not found:
        return []
    names = {name_b for name_b, _ in found}
    step_divergences = [d for d in changed if d.name in names and d.step == first_step]
    if not step_divergences:
        return []
    side = found[0][1]  # the run whose gradient is all zeros
    decay = _decay_of(context, first_step, side, found[0][0])
    if not decay:
        return []  # without decay a zero gradient moves nothing (zero moments give a zero update)
    root = min(step_divergences, key=lambda d: d.sort_key())
    terms = _terms_reaching(context, side, [name for name, _ in found])
    run, other = ("run B", "run A") if side == "b" else ("run A", "run B")
    reach = f" (loss terms that reach them: {_named(terms)})" if terms else ""
    root.cause = "decay_through_zero_gradient"
    root.explanation = (
        f"{_named(name for name, _ in found)} get no gradient in {other} and an all-zero one in {run}{reach}; "
        f"the optimizer ({_optimizer_type(context, first_step, side)}, {decay[0]} {decay[1]}) decays every "
        f"parameter that has a gradient, zero or not, so they change in {run} only from step {first_step}: a "
        f"zero-weighted term still moves the weights it reaches.")
    root.evidence.update(zero_gradient_in=side, parameters_decayed=[name for name, _ in found],
                         decay={decay[0]: decay[1]}, loss_terms=terms, changes_shared=True)
    consequences = [d for d in divergences if d is not root and d.name in names | {f"state of {n}" for n in names}]
    return [Finding(root, consequences)]


def _zero_versus_none(context: CompareContext, step: int) -> list[tuple[str, str]]:
    """(name in B, side whose gradient is all zeros) where the other side has none."""
    record_a, record_b = context.steps_a.get(step) or {}, context.steps_b.get(step) or {}
    grads_a, grads_b = record_a.get("gradients") or {}, record_b.get("gradients") or {}
    found = []
    for name_a, name_b in context.parameters.pairs:
        if name_a not in grads_a and name_b not in grads_b:
            continue
        a, b = grads_a.get(name_a), grads_b.get(name_b)
        if a is None and _all_zero(b):
            found.append((name_b, "b"))
        elif b is None and _all_zero(a):
            found.append((name_b, "a"))
    return found


def _all_zero(summary: Any) -> bool:
    return isinstance(summary, dict) and summary.get("norm") == 0.0 and not summary.get("nan") \
        and not summary.get("inf")


def _decay_of(context: CompareContext, step: int, side: str, name_b: str) -> tuple[str, Any] | None:
    name = name_b if side == "b" else context.parameters.b_to_a.get(name_b, name_b)
    record = (context.steps_b if side == "b" else context.steps_a).get(step) or {}
    for group in (record.get("optimizer") or {}).get("param_groups") or []:
        if not isinstance(group, dict):
            continue
        params = group.get("params")
        if isinstance(params, list) and params and name not in params:
            continue
        for key in DECAY_KEYS:
            value = group.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return key, value
    return None


def _optimizer_type(context: CompareContext, step: int, side: str) -> str:
    record = (context.steps_b if side == "b" else context.steps_a).get(step) or {}
    return str((record.get("optimizer") or {}).get("type") or "optimizer")


def _terms_reaching(context: CompareContext, side: str, names: list[str]) -> list[str]:
    """Terms whose per-term gradient reaches the parameters (step 1's attribution lists even zero norms)."""
    record = (context.steps_b if side == "b" else context.steps_a).get(1) or {}
    terms = []
    for term, entry in ((record.get("term_attribution") or {}).items()):
        norms = (entry or {}).get("norm") or {}
        if any(name in norms for name in names):
            terms.append(f"{term} (weight {(entry or {}).get('weight')})")
    return terms

"""How far an intervened run B is from run A, on the numbers both runs share.

"Shared numbers" are what both runs compute for the same item: outputs of modules both have, shared loss
terms and the total, gradients, optimizer state and values of shared parameters, buffers. What exists in
one run only (an added module, a zero-weighted term, its draws) is not shared, so an intervention that makes
every shared number bitwise equal has removed every way the change reached the model. The distance at the
last step (largest |A - B| over shared parameters, |loss A - loss B|) says how much closer one that does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro_audit.audit.divergence import Divergence
from repro_audit.audit.trace import Trace

SHARED_CATEGORIES = ("module_outputs", "loss_terms", "gradients", "optimizer", "parameters", "buffers")
NOT_SHARED = ("environment", "code", "config", "graph", "initialisation", "data", "health")  # not compared
SHARED_KINDS = ("changed", "nonfinite")
SETTINGS = frozenset({"hyperparameter", "scheduler_setting"})  # optimizer settings: inputs, not computed numbers
REORDERING_ULP = 64  # at most this many ULP at the first remaining divergence, all finite: summation order


@dataclass
class Effect:
    """Run B (as intervened) against run A on the shared numbers."""

    equal: bool
    first: Divergence | None  # the first shared number that still differs, in causal order
    parameter_distance: float | None  # largest |A - B| over shared parameters at the last step
    loss_difference: float | None  # |total loss A - total loss B| at the last step
    last_step: int

    @property
    def reordering_only(self) -> bool:
        """The first remaining difference is a few ULP between finite values: floating-point reordering."""
        if self.first is None:
            return False
        evidence = self.first.evidence
        ulp = evidence.get("max_ulp")
        return (self.first.kind == "changed" and isinstance(ulp, int) and 0 < ulp <= REORDERING_ULP
                and not any(evidence.get(key) for key in ("nan_a", "nan_b", "inf_a", "inf_b")))

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "equal_on_shared": self.equal,
            "parameter_distance": self.parameter_distance,
            "loss_difference": self.loss_difference,
            "last_step": self.last_step,
            "first_remaining": None if first is None else {
                "category": first.category, "step": first.step, "name": first.name, "kind": first.kind,
                "explanation": first.explanation, "max_ulp": first.evidence.get("max_ulp"),
                "max_abs_error": first.evidence.get("max_abs_error")},
            "reordering_only": self.reordering_only,
        }


def measure(trace_a: Trace, trace_b: Trace) -> Effect:
    """Compare run B with run A on the shared numbers only (bitwise) and measure the last step's distance."""
    from repro_audit.audit.diff import compare_traces

    comparison = compare_traces(trace_a, trace_b, ignore=NOT_SHARED)
    remaining = [d for d in comparison.walk() if d.category in SHARED_CATEGORIES and d.kind in SHARED_KINDS
                 and not SETTINGS.intersection(d.evidence)]
    first = min(remaining, key=lambda d: d.sort_key()) if remaining else None
    last = min(len(trace_a.steps), len(trace_b.steps))
    # Nothing compared is no match: an incomplete run matches only as far as it went.
    whole = trace_a.complete and trace_b.complete and last > 0
    return Effect(equal=first is None and whole, first=first, parameter_distance=_parameter_distance(trace_a, trace_b, last),
                  loss_difference=_loss_difference(trace_a, trace_b, last), last_step=last)


def _parameter_distance(trace_a: Trace, trace_b: Trace, step: int) -> float | None:
    """Largest |A - B| over parameters both runs have, from kept values; NaN where one side is NaN and the
    other not; None without values."""
    if not step:
        return None
    values_a, values_b = trace_a.values(step), trace_b.values(step)
    if values_a is None or values_b is None:
        return None
    shared = sorted(set(k for k in values_a.keys() if k.startswith("parameters/")) & set(values_b.keys()))
    if not shared:
        return None
    largest = 0.0
    for key in shared:
        a, b = values_a.get(key), values_b.get(key)
        if a is None or b is None or a.shape != b.shape:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        same_nan = np.isnan(a64) == np.isnan(b64)
        if not same_nan.all():
            return math.nan
        both = ~np.isnan(a64)
        if both.any():
            with np.errstate(invalid="ignore"):
                difference = np.abs(a64[both] - b64[both])
            difference = np.where(a64[both] == b64[both], 0.0, difference)  # inf == inf
            largest = max(largest, float(np.nanmax(difference)) if difference.size else 0.0)
    return largest


def _loss_difference(trace_a: Trace, trace_b: Trace, step: int) -> float | None:
    if not step:
        return None
    loss_a, loss_b = ((trace.step(step) or {}).get("total_loss") for trace in (trace_a, trace_b))
    if not isinstance(loss_a, (int, float)) or not isinstance(loss_b, (int, float)):
        return None
    if math.isnan(loss_a) or math.isnan(loss_b):
        return math.nan  # NaN in both runs is no agreement
    return abs(float(loss_a) - float(loss_b))

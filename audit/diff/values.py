"""Numbers for one tensor that differs: how many elements, by how much, in ULP, and where NaN/Inf disagree.

Bitwise is the default tolerance because this is a determinism tool; the statistics say which tolerance
would have passed (as Polygraphy's comparator does) so a user can decide whether a difference matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro_audit.audit.diff.array_stats import MAX_INDICES, float_evidence

SUMMARY_STATS = ("norm", "mean", "min", "max", "max_abs")

_ULP_VIEWS = {2: np.int16, 4: np.int32, 8: np.int64}


@dataclass(frozen=True)
class Tolerance:
    """Element-wise closeness as numpy.isclose defines it; zero means bitwise."""

    rtol: float = 0.0
    atol: float = 0.0

    @property
    def bitwise(self) -> bool:
        return self.rtol == 0.0 and self.atol == 0.0

    def to_dict(self) -> dict[str, float]:
        return {"rtol": self.rtol, "atol": self.atol}


def summaries_equal(a: dict[str, Any] | None, b: dict[str, Any] | None, tolerance: Tolerance) -> bool:
    """Equal hashes are bitwise equal; within a tolerance and without values, the statistics must be close."""
    if a is None or b is None:
        return a is None and b is None
    if a.get("hash") == b.get("hash"):
        return True
    if tolerance.bitwise or a.get("shape") != b.get("shape"):
        return False
    if (a.get("nan"), a.get("inf")) != (b.get("nan"), b.get("inf")):
        return False
    return all(_close(a.get(key), b.get(key), tolerance) for key in SUMMARY_STATS)


def summary_evidence(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """What two summaries say about a difference when the values were not kept."""
    evidence: dict[str, Any] = {"compared_by": "summary"}
    if a is None or b is None:
        evidence.update(a=_brief(a), b=_brief(b))
        return evidence
    if a.get("shape") != b.get("shape") or a.get("dtype") != b.get("dtype"):
        evidence["shape"] = {"a": a.get("shape"), "b": b.get("shape")}
        evidence["dtype"] = {"a": a.get("dtype"), "b": b.get("dtype")}
    evidence["numel"] = a.get("numel")
    for key in ("nan", "inf"):
        evidence[f"{key}_a"], evidence[f"{key}_b"] = a.get(key, 0), b.get(key, 0)
    evidence["norm"] = {"a": a.get("norm"), "b": b.get("norm")}
    evidence["max_abs"] = {"a": a.get("max_abs"), "b": b.get("max_abs")}
    norm_a, norm_b = a.get("norm"), b.get("norm")
    if isinstance(norm_a, (int, float)) and isinstance(norm_b, (int, float)) and _finite(norm_a) and _finite(norm_b):
        evidence["norm_rel_diff"] = abs(norm_a - norm_b) / max(abs(norm_a), abs(norm_b), 1e-30)
    return evidence


def array_evidence(a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> dict[str, Any]:
    """Element-wise statistics of two kept tensors; `mismatched` counts elements outside the tolerance."""
    evidence: dict[str, Any] = {"compared_by": "values", "numel": int(a.size)}
    if a.shape != b.shape:
        evidence.update(shape={"a": list(a.shape), "b": list(b.shape)}, mismatched=int(max(a.size, b.size)))
        return evidence
    if a.dtype.kind not in "fc" or b.dtype.kind not in "fc" or a.dtype.kind == "c" or b.dtype.kind == "c":
        differ = a != b
        flat = np.flatnonzero(differ)[:MAX_INDICES]
        evidence.update(mismatched=int(np.count_nonzero(differ)),
                        first_indices=[[int(i) for i in np.unravel_index(index, a.shape)] for index in flat])
        return evidence
    evidence.update(float_evidence(a, b, rtol=tolerance.rtol, atol=tolerance.atol))
    return evidence


def max_ulp_distance(a: np.ndarray, b: np.ndarray) -> int | None:
    """Largest distance in units in the last place between finite elements of the same float dtype."""
    if a.dtype != b.dtype or a.dtype.kind != "f" or a.dtype.itemsize not in _ULP_VIEWS or a.size == 0:
        return None
    return float_evidence(a, b, rtol=0.0, atol=0.0)["max_ulp"]


def _close(a: Any, b: Any, tolerance: Tolerance) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not (_finite(a) and _finite(b)):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return abs(a - b) <= tolerance.atol + tolerance.rtol * abs(b)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _brief(summary: dict[str, Any] | None) -> Any:
    if summary is None:
        return None
    return {key: summary.get(key) for key in ("shape", "dtype", "norm", "nan", "inf")}

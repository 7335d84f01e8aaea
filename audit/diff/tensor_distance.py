"""How far apart one tensor (or one loss value) is in run A and run B: max |A-B|, its relative size, ULP.

The divergence tree says *that* a tensor differs; charts over steps need *by how much*, for every tensor,
also the ones the tree counted but did not keep. Where the comparator had both runs' values, its numbers are
exact. Otherwise they come from the recorded summaries and are lower bounds: only statistics that are exact
element values (min, max, max |x|) are used, because the largest element-wise difference is at least the
difference of the extremes (and, mapped to ordered integers, at least their ULP distance). Norms and means
are sums rounded in float32 and could overstate a difference of a few ULP, so they are left out.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

EXTREMES = ("min", "max", "max_abs")
# struct formats of a float dtype and of the signed integer of its width, and that width in bits.
_FORMATS = {"float16": ("<e", "<h", 16), "float32": ("<f", "<i", 32), "float64": ("<d", "<q", 64)}


@dataclass(frozen=True)
class TensorDistance:
    """Distance of one tensor between the runs; `max_abs` None when NaN/Inf in either run hide it."""

    max_abs: float | None
    max_rel: float | None  # max |A-B| relative to the tensor's largest magnitude in either run
    max_ulp: int | None
    exact: bool  # from both runs' values or equal hashes; False: a lower bound from summaries
    nonfinite: bool  # NaN or Inf in either run
    differs: bool
    nan: bool = False  # NaN in either run: training broke, as opposed to the -inf of an attention mask


IDENTICAL = TensorDistance(0.0, 0.0, 0, True, False, False)


def tensor_distance(a: dict[str, Any] | None, b: dict[str, Any] | None,
                    evidence: dict[str, Any] | None = None) -> TensorDistance | None:
    """Distance of two tensor summaries; `evidence` is the comparator's, used when it compared values.
    None when the tensor is missing in a run (nothing to measure) or the shapes differ."""
    if not a or not b:
        return None
    nonfinite = any(summary.get(key) for summary in (a, b) for key in ("nan", "inf"))
    nan = any(summary.get("nan") for summary in (a, b))
    if a.get("hash") is not None and a.get("hash") == b.get("hash"):
        return TensorDistance(0.0, 0.0, 0, True, nonfinite, False, nan)
    if a.get("shape") != b.get("shape"):
        return None
    scale = _scale(a, b)
    evidence = evidence or {}
    measured = evidence.get("compared_by") == "values" and _number(evidence.get("max_abs_error"))
    # Over the elements finite in both runs (an overflow to Inf was excluded by _number); a 0 there says
    # nothing when NaN/Inf stand where the other run has numbers.
    if measured and not (evidence.get("nonfinite_mismatch") and evidence["max_abs_error"] == 0):
        max_abs = float(evidence["max_abs_error"])
        ulp = evidence.get("max_ulp")
        return TensorDistance(max_abs, _relative(max_abs, scale), ulp if isinstance(ulp, int) else None, True,
                              nonfinite, True, nan)
    if nonfinite:
        return TensorDistance(None, None, None, False, True, True, nan)
    bound = max((abs(float(a[key]) - float(b[key])) for key in EXTREMES if _number(a.get(key)) and _number(b.get(key))),
                default=0.0)
    return TensorDistance(bound, _relative(bound, scale), _ulp_bound(a, b), False, False, True)


def value_distance(a: Any, b: Any) -> TensorDistance | None:
    """Distance of two recorded scalars (a loss term's value): exact; None when one is missing."""
    if not _number(a, finite=False) or not _number(b, finite=False):
        return None
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)):
        same = (math.isnan(a) and math.isnan(b)) or a == b
        return TensorDistance(None, None, None, True, True, not same, math.isnan(a) or math.isnan(b))
    if a == b:
        return IDENTICAL
    error = abs(a - b)
    return TensorDistance(error, _relative(error, max(abs(a), abs(b))), _scalar_ulp(a, b), True, False, True)


def _scalar_ulp(a: float, b: float) -> int:
    """ULP distance in float32 when both values are float32 numbers (a loss usually is), else in float64."""
    dtype = "float32" if all(_fits(value, "float32") for value in (a, b)) else "float64"
    return abs(_ordered(a, dtype) - _ordered(b, dtype))


def _scale(a: dict[str, Any], b: dict[str, Any]) -> float:
    values = [abs(float(summary[key])) for summary in (a, b) for key in EXTREMES if _number(summary.get(key))]
    return max(values, default=0.0)


def _relative(error: float, scale: float) -> float | None:
    """Relative to the largest magnitude; None where there is none (the series stay finite, plain JSON)."""
    if error == 0.0:
        return 0.0
    return error / scale if scale > 0 and math.isfinite(error / scale) else None


def _ulp_bound(a: dict[str, Any], b: dict[str, Any]) -> int | None:
    """ULP distance of the minima and of the maxima: a lower bound of the largest element-wise one (the map
    to ordered integers is monotonic, so the extremes map to the extremes)."""
    dtype = str(a.get("dtype"))
    if dtype not in _FORMATS or a.get("dtype") != b.get("dtype"):
        return None
    distances = [abs(_ordered(float(a[key]), dtype) - _ordered(float(b[key]), dtype)) for key in ("min", "max")
                 if _number(a.get(key)) and _number(b.get(key)) and _fits(a[key], dtype) and _fits(b[key], dtype)]
    return max(distances) if distances else None


def _ordered(value: float, dtype: str) -> int:
    """The float's bits as an integer whose order and spacing follow the floats, as
    repro_audit.audit.diff.array_stats.ordered_ints maps arrays (struct instead of numpy: this runs per tensor)."""
    float_format, int_format, bits = _FORMATS[dtype]
    raw = struct.unpack(int_format, struct.pack(float_format, value))[0]
    return (raw ^ ((1 << (bits - 1)) - 1)) + 1 if raw < 0 else raw


def _fits(value: float, dtype: str) -> bool:
    """The value is exactly a number of this dtype (summaries hold float32 extremes as doubles)."""
    float_format = _FORMATS[dtype][0]
    try:
        return struct.unpack(float_format, struct.pack(float_format, value))[0] == value
    except (OverflowError, struct.error):
        return False


def _number(value: Any, *, finite: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) or not finite

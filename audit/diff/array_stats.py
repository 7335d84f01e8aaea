"""Element-wise statistics of two kept tensors, computed in cache-sized chunks.

Comparing must keep up with reading the values files: every statistic (mismatch count, max absolute and
relative error, ULP distance, NaN/Inf disagreement, first differing indices) is gathered in one pass over
chunks that stay in the CPU cache, instead of one pass over the whole tensor per statistic. The median is
taken over an even sample of at most MEDIAN_SAMPLE differing elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHUNK = 1 << 16  # elements per chunk: 256 KiB of float32, several arrays of it fit in L2
MEDIAN_SAMPLE = 100_000
MAX_INDICES = 5
_SIGNED = {2: np.int16, 4: np.int32, 8: np.int64}


@dataclass
class _Totals:
    mismatched: int = 0
    nan_a: int = 0
    nan_b: int = 0
    inf_a: int = 0
    inf_b: int = 0
    nonfinite_mismatch: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_ulp: int | None = 0
    first: list[int] = field(default_factory=list)
    sample: list[np.ndarray] = field(default_factory=list)


def float_evidence(a: np.ndarray, b: np.ndarray, *, rtol: float, atol: float) -> dict[str, Any]:
    """Statistics of two float tensors of the same shape; `mismatched` counts elements outside rtol/atol."""
    work = np.result_type(a.dtype, b.dtype, np.float32)
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    ulp_dtype = _SIGNED.get(a.dtype.itemsize) if a.dtype == b.dtype and a.dtype.kind == "f" else None
    stride = max(1, a.size // MEDIAN_SAMPLE)
    totals = _Totals(max_ulp=0 if ulp_dtype is not None else None)
    for start in range(0, a.size, CHUNK):
        chunk_a, chunk_b = flat_a[start:start + CHUNK], flat_b[start:start + CHUNK]
        _accumulate(totals, chunk_a, chunk_b, start, work, ulp_dtype, rtol, atol, stride)
    sample = np.concatenate(totals.sample) if totals.sample else np.empty(0)
    evidence: dict[str, Any] = {
        "mismatched": totals.mismatched,
        "nan_a": totals.nan_a, "nan_b": totals.nan_b, "inf_a": totals.inf_a, "inf_b": totals.inf_b,
        "nonfinite_mismatch": totals.nonfinite_mismatch,
        "max_abs_error": totals.max_abs,
        "max_rel_error": totals.max_rel,
        "median_abs_error": float(np.median(sample)) if sample.size else 0.0,
        "max_ulp": totals.max_ulp,
        "first_indices": [[int(i) for i in np.unravel_index(index, a.shape)] for index in totals.first],
    }
    if totals.nonfinite_mismatch == 0:
        evidence["passes_at_atol"] = totals.max_abs
    return evidence


def _accumulate(totals: _Totals, chunk_a: np.ndarray, chunk_b: np.ndarray, start: int, work: Any,
                ulp_dtype: Any, rtol: float, atol: float, stride: int) -> None:
    a_work, b_work = chunk_a.astype(work, copy=False), chunk_b.astype(work, copy=False)
    with np.errstate(all="ignore"):
        error = np.abs(a_work - b_work)
    chunk_max = error.max()
    if chunk_max == 0:
        return  # bitwise equal chunk (the common case between nearly equal runs)
    # A NaN or Inf in either operand makes the difference non-finite: one test finds them all.
    all_finite = bool(np.isfinite(chunk_max))
    special = None
    if not all_finite:
        special = ~np.isfinite(error)
        _count_specials(totals, a_work[special], b_work[special])
        error[special] = 0.0
        chunk_max = error.max()
    if rtol == 0.0 and atol == 0.0:
        differ = error > 0
    else:
        with np.errstate(all="ignore"):
            differ = error > atol + rtol * np.abs(b_work)
    if special is not None:
        special_a, special_b = a_work[special], b_work[special]
        differ[special] = ~((np.isnan(special_a) & np.isnan(special_b)) | (special_a == special_b))
    count = int(np.count_nonzero(differ))
    totals.mismatched += count
    if chunk_max == 0:
        return
    totals.max_abs = max(totals.max_abs, float(chunk_max))
    with np.errstate(all="ignore"):
        relative = error / np.maximum(np.abs(b_work), np.finfo(work).tiny)
    totals.max_rel = max(totals.max_rel, float(relative.max()))
    if ulp_dtype is not None:
        totals.max_ulp = max(totals.max_ulp or 0, _ulp(chunk_a, chunk_b, ulp_dtype, special))
    sampled = error[(-start) % stride::stride] if stride > 1 else error
    totals.sample.append(sampled[sampled > 0].astype(np.float64))
    if len(totals.first) < MAX_INDICES and count:
        totals.first.extend(int(start + i) for i in np.flatnonzero(differ)[:MAX_INDICES - len(totals.first)])


def _count_specials(totals: _Totals, special_a: np.ndarray, special_b: np.ndarray) -> None:
    nan_a, nan_b = np.isnan(special_a), np.isnan(special_b)
    inf_a, inf_b = np.isinf(special_a), np.isinf(special_b)
    totals.nan_a += int(np.count_nonzero(nan_a))
    totals.nan_b += int(np.count_nonzero(nan_b))
    totals.inf_a += int(np.count_nonzero(inf_a))
    totals.inf_b += int(np.count_nonzero(inf_b))
    same = (nan_a & nan_b) | (special_a == special_b)
    totals.nonfinite_mismatch += int(np.count_nonzero(~same))


def _ulp(a: np.ndarray, b: np.ndarray, signed: Any, special: np.ndarray | None) -> int:
    wide = np.int64 if a.dtype.itemsize < 8 else np.float64  # float64 keeps int64 differences from overflowing
    distance = np.abs(ordered_ints(a, signed).astype(wide) - ordered_ints(b, signed))
    if special is not None:
        distance[special] = 0  # NaN and Inf are counted apart, not in ULP
    return int(distance.max())


def ordered_ints(array: np.ndarray, signed: Any) -> np.ndarray:
    """Map floats to integers whose order and spacing follow the floats (adjacent floats differ by 1).

    Negative floats (sign bit set) have their magnitude bits flipped and are moved up by one, so -0.0 and
    +0.0 both map to 0 and the smallest negative subnormal to -1.
    """
    raw = np.ascontiguousarray(array).view(signed)
    sign = raw >> (8 * raw.dtype.itemsize - 1)  # -1 for negative floats, 0 otherwise
    magnitude_bits = np.array(np.iinfo(signed).max, dtype=signed)
    return (raw ^ (sign & magnitude_bits)) - sign

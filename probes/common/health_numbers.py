"""Framework-free numbers of the training-health record, shared by the torch and TF health probes.

Both probes write the same `health` record (docs/health.md): the per-layer accumulation, the moments of an
output from its summary, the initial-loss expectation and the process memory readings are the same
arithmetic whatever made the tensors, so they live here once.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

TANH_SATURATION = 0.99  # |y| above this is saturated: tanh'(y) = 1 - y^2 < 0.02
SIGMOID_SATURATION = 0.01  # y below this or above 1 - this: sigmoid'(y) = y(1 - y) < 0.0099


def initial_loss(loss_terms: Mapping[str, float], num_classes: Any, *, notes: list[str]) -> dict[str, Any]:
    """Each term's step-1 value, with -log(1/C) where the recipe declared C for it."""
    declared = _declared_classes(loss_terms, num_classes, notes)
    result = {}
    for term, value in loss_terms.items():
        classes = declared.get(term)
        result[term] = {"value": float(value), "num_classes": classes,
                        "expected": math.log(classes) if classes else None,
                        "source": "declared" if classes else None}
    return result


def moments(low: float, high: float, total: float, norm: float, numel: int) -> dict[str, float]:
    mean = total / numel
    variance = norm * norm / numel - mean * mean
    std = math.sqrt(max(variance, 0.0)) if math.isfinite(variance) else float("nan")
    return {"min": low, "max": high, "mean": mean, "std": std}


def empty_layer() -> dict[str, Any]:
    return {"weight_sq": 0.0, "params": 0, "grad_sq": 0.0, "grad_min": None, "grad_max": None,
            "grad_zeros": 0, "grad_numel": 0}


def finish_layer(entry: Mapping[str, Any]) -> dict[str, Any]:
    has_grad = entry["grad_numel"] > 0
    low, high = entry["grad_min"], entry["grad_max"]
    return {
        "params": entry["params"],
        "weight_norm": math.sqrt(entry["weight_sq"]),
        "grad_norm": math.sqrt(entry["grad_sq"]) if has_grad else None,
        "grad_min": low,
        "grad_max": high,
        "grad_max_abs": fmax(abs(low), abs(high)) if has_grad else None,
        "grad_zero_share": entry["grad_zeros"] / entry["grad_numel"] if has_grad else None,
        "grad_params": entry["grad_numel"],
    }


def fmin(a: float | None, b: float) -> float:
    # NaN wins: a non-finite gradient must not disappear behind a finite minimum.
    if a is None or math.isnan(b):
        return b
    return a if math.isnan(a) else min(a, b)


def fmax(a: float | None, b: float) -> float:
    if a is None or math.isnan(b):
        return b
    return a if math.isnan(a) else max(a, b)


def _declared_classes(loss_terms: Mapping[str, float], num_classes: Any, notes: list[str]) -> dict[str, int]:
    if num_classes is None:
        return {}
    if isinstance(num_classes, Mapping):
        declared = {str(term): classes for term, classes in num_classes.items()}
    else:
        declared = {term: num_classes for term in loss_terms}
    valid = {}
    for term, classes in declared.items():
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            notes.append(f"num_classes for loss term {term!r} must be an integer >= 2, got {classes!r}; ignored")
        elif term not in loss_terms:
            notes.append(f"num_classes names loss term {term!r}, which the loss function did not return")
        else:
            valid[term] = classes
    return valid


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@lru_cache(maxsize=1)
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33; sums every arena
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function  # type: ignore[no-any-return]


def heap_in_use() -> int | None:
    function = _mallinfo2()
    if function is None:
        return None
    info = function()
    return int(info.uordblks + info.hblkhd)  # in arenas + in mmapped chunks


def current_rss() -> tuple[int, str]:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            resident_pages = int(handle.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE"), "statm"
    except (OSError, ValueError, IndexError):
        # No /proc (macOS): the peak is the best the standard library offers; it still shows steady growth.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if os.uname().sysname == "Darwin" else peak * 1024), "peak"

"""Summaries (statistics plus content hash) of torch tensors, batched to stay cheap.

Statistics of many tensors are stacked and fetched with one `.tolist()`, so a CUDA run synchronises once
per group instead of once per tensor; NaN and Inf are counted only when the norm says there are some.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from probes.common.hashing import hash_array, summarize_array

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Raw values as numpy without a copy where possible; bfloat16 travels as its int16 bit pattern."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    return tensor.contiguous().numpy()


def values_for_file(tensor: torch.Tensor) -> np.ndarray:
    """Values as kept in safetensors files: numpy cannot hold bfloat16, so it is widened to float32."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return np.ascontiguousarray(tensor.cpu().numpy())


def tensor_hash(tensor: torch.Tensor) -> str:
    return hash_array(as_numpy(tensor))


def summarize(tensors: Sequence[torch.Tensor], *, count_zeros: bool = True) -> list[dict[str, Any]]:
    """Tensor summaries in the trace format, for many tensors at once.

    `count_zeros=False` leaves `zeros` null: counting them is the costliest statistic, and module outputs,
    the largest tensors of a step, do not need it (dead units are measured by the health probe).
    """
    summaries: list[dict[str, Any] | None] = [None] * len(tensors)
    float_index = [i for i, t in enumerate(tensors) if t.dtype in FLOAT_DTYPES and t.numel() > 0]
    is_float = set(float_index)
    for i, tensor in enumerate(tensors):
        if i not in is_float:
            summaries[i] = summarize_array(as_numpy(tensor), dtype_name=dtype_name(tensor.dtype))
    if float_index:
        floats = [tensors[i].detach() for i in float_index]
        for i, summary in zip(float_index, _float_summaries(floats, count_zeros=count_zeros)):
            summaries[i] = summary
    return [summary for summary in summaries if summary is not None]


def _float_summaries(tensors: list[torch.Tensor], *, count_zeros: bool) -> list[dict[str, Any]]:
    with torch.no_grad():
        norms = torch._foreach_norm([t.float() if t.dtype != torch.float32 and t.dtype != torch.float64 else t
                                     for t in tensors])
        rows, nonzeros = [], []
        for tensor, norm in zip(tensors, norms):
            low, high = torch.aminmax(tensor)
            # A float32 sum (float64 for float64 tensors) is five times cheaper than always summing in
            # float64 and exact enough for a mean; half types are summed in float32 so they cannot overflow.
            total = tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
            rows.append(torch.stack([norm, low, high, total]))  # promoted to the widest float of the four
            if count_zeros:
                nonzeros.append(torch.count_nonzero(tensor))
        stats = torch.stack(rows).double().tolist()
        counts = torch.stack(nonzeros).tolist() if nonzeros else [None] * len(tensors)
    summaries = []
    for tensor, (norm, low, high, total), nonzero in zip(tensors, stats, counts):
        numel = tensor.numel()
        nan = inf = 0
        if not np.isfinite(norm):
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
        summaries.append({
            "shape": list(tensor.shape),
            "dtype": dtype_name(tensor.dtype),
            "numel": numel,
            "hash": tensor_hash(tensor),
            "norm": norm,
            "min": low,
            "max": high,
            "mean": total / numel,
            "max_abs": float("nan") if nan else max(abs(low), abs(high)),
            "nan": nan,
            "inf": inf,
            "zeros": None if nonzero is None else numel - int(nonzero),
        })
    return summaries


def summarize_one(tensor: torch.Tensor) -> dict[str, Any]:
    return summarize([tensor])[0]


def flatten_tensors(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Named tensors inside a batch or module output (tensors, tuples, lists, dicts, dataclasses)."""
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, torch.Tensor):
        found.append((prefix or "0", value))
    elif isinstance(value, dict):
        for key in value:
            found.extend(flatten_tensors(value[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.extend(flatten_tensors(item, f"{prefix}.{index}" if prefix else str(index)))
    elif hasattr(value, "__dataclass_fields__"):
        for key in value.__dataclass_fields__:
            found.extend(flatten_tensors(getattr(value, key), f"{prefix}.{key}" if prefix else key))
    return found

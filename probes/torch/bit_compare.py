"""Bitwise comparison of an op's two results, as cheap as the device allows.

Bit patterns, not values: a NaN equals the same NaN and 0.0 differs from -0.0, since this is a determinism
tool. On CPU the two results are compared through zero-copy numpy views of their bytes: torch.equal on
integer views read them at about a tenth of memcmp's speed there (6-7 ms against 1 ms for 10 MB on the
2-core benchmark machine) and was the largest cost of `repro-audit ops` after the second execution itself.
On any other device torch.equal runs where the tensors are, with no copy to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from repro_audit.probes.torch.tensors import dtype_name

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bit pattern (NaN payloads included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_sparse or a.is_quantized or a.device.type == "meta":
        return True  # not compared: no dense bit pattern to read
    if _host_bytes_readable(a) and _host_bytes_readable(b):
        return bool(np.array_equal(_words(a), _words(b)))
    return bool(torch.equal(bits(a), bits(b)))


def distance(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """How far apart two results of one op are: elements that differ, largest absolute difference."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return {"shapes": [list(a.shape), list(b.shape)], "dtypes": [dtype_name(a.dtype), dtype_name(b.dtype)]}
    differ = bits(a) != bits(b)
    result: dict[str, Any] = {"elements": a.numel(), "differing": int(differ.sum())}
    if a.is_floating_point() or a.is_complex():
        gap = (a.detach().double() - b.detach().double()).abs()[differ]
        finite = gap[torch.isfinite(gap)]
        result["max_abs"] = float(finite.max()) if finite.numel() else None
        result["non_finite"] = int(gap.numel() - finite.numel())
    elif a.dtype != torch.bool:
        result["max_abs"] = float((a.long() - b.long()).abs().max()) if a.numel() else 0.0
    return result


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as integers of the same width (a view, whatever the strides, unless a lazy
    conjugate or negation bit must be applied first)."""
    t = t.detach().resolve_conj().resolve_neg()  # lazy bits are materialised (a copy only where one is set)
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point():
        return t.view(_BITS[t.element_size()])
    return t


def _host_bytes_readable(t: torch.Tensor) -> bool:
    """A plain dense CPU tensor whose memory numpy can read as it is (no lazy conjugate or negation bit)."""
    return (type(t) is torch.Tensor and t.device.type == "cpu" and t.is_contiguous() and t.layout == torch.strided
            and not t.is_conj() and not t.is_neg())


def _words(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as the widest unsigned words they divide into (fewer elements to compare)."""
    raw = t.detach().reshape(-1).view(torch.uint8).numpy()
    for width, kind in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if raw.size % width == 0:
            return raw.view(kind)
    return raw

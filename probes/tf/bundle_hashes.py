"""Hashes, and statistics of the large ones, of the arrays a TensorFlow step returned: one kernel call.

A recorded step hands back some 700 arrays (slices of the packed vectors, and large tensors of their own).
Hashing them one by one through the `xxhash` binding, 64 KiB chunk by chunk, took about 9 ms a step on the
fixture Transformer, and reducing the ~250 large ones in the graph about 15 ms more. The kernel of
`probes.common.native_summary` reads every array once, on all cores, and gives both: the same hash
(`hashing.content_hash` after `hash_raw`'s prefix) and the statistics torch's summaries have (float32
lanes folded into double totals block by block). Where it cannot be had, the binding hashes and the
caller reduces as before (`pack` then reduces in the graph).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probes.common.hashing import content_hash
from probes.common.native_summary import BYTES, FLOAT32, FLOAT64, PreparedBatch, kernel

_KINDS = {np.dtype(np.float32): FLOAT32, np.dtype(np.float64): FLOAT64}
_PREFIXES: dict[tuple[str, tuple[int, ...]], bytes] = {}  # the same few hundred shapes step after step
_PREFIX_CACHE_LIMIT = 1 << 14


@dataclass(frozen=True, slots=True)
class Reduced:
    """One array's statistics as the kernel reduced them."""

    low: float
    high: float
    total: float
    sum_of_squares: float
    zeros: int
    nan: int
    inf: int


def raw_prefix(array: np.ndarray) -> bytes:
    """What `hash_raw` hashes before the bytes: numpy's dtype string and the shape (0-d as `()`)."""
    key = (array.dtype.str, array.shape)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        if len(_PREFIXES) >= _PREFIX_CACHE_LIMIT:
            _PREFIXES.clear()
        prefix = _PREFIXES[key] = f"{key[0]}{tuple(int(n) for n in key[1])}".encode()
    return prefix


def hashes_and_stats(arrays: Sequence[np.ndarray], wanted: Sequence[bool]
                     ) -> tuple[list[str], list[Reduced | None]]:
    """The hash of each C-contiguous array and, where `wanted`, its statistics: None where the kernel could
    not reduce it (no kernel, or a half type), for the caller to reduce with numpy."""
    native = kernel()
    if native is None or not arrays:
        return [content_hash(raw_prefix(array), array) for array in arrays], [None] * len(arrays)
    kinds = [_KINDS.get(array.dtype) if want else None for array, want in zip(arrays, wanted)]
    batch = PreparedBatch(native, [
        (array.ctypes.data, array.nbytes, BYTES, raw_prefix(array)) if kind is None else
        (array.ctypes.data, array.size, kind, raw_prefix(array))
        for array, kind in zip(arrays, kinds)])
    batch.run(zeros=any(kind is not None for kind in kinds), threads=_threads())
    stats, counts = batch.stats.tolist(), batch.counts.tolist()
    reduced: list[Reduced | None] = [
        None if kind is None else Reduced(*stats[i], *counts[i]) for i, kind in enumerate(kinds)]
    return batch.digests(), reduced


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1

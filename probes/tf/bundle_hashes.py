"""Hashes, and statistics of the large ones, of the arrays a TensorFlow step returned: one kernel call.

A recorded step hands back some 700 arrays (slices of the packed vectors, and large tensors of their own).
Hashing them one by one through the `xxhash` binding, 64 KiB chunk by chunk, took about 9 ms a step on the
fixture Transformer, and reducing the ~250 large ones in the graph about 15 ms more. The kernel of
`repro_audit.probes.common.native_summary` reads every array once, on all cores, and gives both: the same hash
(`hashing.content_hash` after `hash_raw`'s prefix) and the statistics torch's summaries have (float32
lanes folded into double totals block by block). Where it cannot be had, the binding hashes and the
caller reduces as before (`pack` then reduces in the graph).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from repro_audit.probes.common.hashing import content_hash
from repro_audit.probes.common.native_summary import BYTES, FLOAT32, FLOAT64, PreparedBatch, Summary, kernel

_KINDS = {np.dtype(np.float32): FLOAT32, np.dtype(np.float64): FLOAT64}
_PREFIXES: dict[tuple[str, tuple[int, ...]], bytes] = {}  # the same few hundred shapes step after step
_PREFIX_CACHE_LIMIT = 1 << 14


def raw_prefix(dtype_str: str, shape: tuple[int, ...]) -> bytes:
    """What a TF array's hash takes before its bytes: numpy's dtype string and the shape (0-d as `()`)."""
    key = (dtype_str, shape)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        if len(_PREFIXES) >= _PREFIX_CACHE_LIMIT:
            _PREFIXES.clear()
        prefix = _PREFIXES[key] = f"{dtype_str}{tuple(int(n) for n in shape)}".encode()
    return prefix


def hashes_and_stats(arrays: Sequence[np.ndarray], wanted: Sequence[bool]
                     ) -> tuple[list[str], list[Summary | None]]:
    """The hash of each C-contiguous array and, where `wanted`, the kernel's statistics of it: None where
    the kernel could not reduce it (no kernel, or a half type), for the caller to reduce with numpy."""
    native = kernel()
    if native is None or not arrays:
        return [content_hash(raw_prefix(a.dtype.str, a.shape), a) for a in arrays], [None] * len(arrays)
    kinds = [_KINDS.get(array.dtype) if want else None for array, want in zip(arrays, wanted)]
    batch = PreparedBatch(native, [
        (array.ctypes.data, array.nbytes if kind is None else array.size, BYTES if kind is None else kind,
         raw_prefix(array.dtype.str, array.shape))
        for array, kind in zip(arrays, kinds)])
    batch.run(zeros=any(kind is not None for kind in kinds), threads=kernel_threads())
    found = batch.summaries()
    return [summary.digest for summary in found], [
        None if kind is None else summary for kind, summary in zip(kinds, found)]


def kernel_threads() -> int:
    """The CPUs this process may run on: the kernel's threads."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1

"""Content hashes and statistics of arrays, the same for every framework.

xxh3-128 over the raw bytes: fast enough to hash every gradient and parameter at every step (about 1 ms
for 5.5M float32 values here), and equal hashes mean bitwise-equal tensors. An array of more than
CHUNK_BYTES is hashed as the XXH3-128 of its chunks' hashes, so that the native kernel can read the chunks
on several threads, each where the framework's own thread wrote them (native/summary.c); a smaller one
as its bytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xxhash

# Arrays of more bytes are hashed chunk by chunk: native/summary.c's CHUNK (trace schema 3 on).
CHUNK_BYTES = 64 * 1024


def hash_bytes(buffer: Any) -> str:
    """XXH3-128 of a byte string as it is (files, generator states): not an array's content hash."""
    return "xxh3:" + xxhash.xxh3_128_hexdigest(buffer)


def content_hash(prefix: bytes, data: Any) -> str:
    """The hash of an array's bytes `data` (a C-contiguous numpy array or a byte buffer) after `prefix`.

    Up to CHUNK_BYTES: XXH3-128 of the prefix then the bytes. Past that: XXH3-128 of the prefix then the
    canonical (big-endian) XXH3-128 digest of every CHUNK_BYTES chunk in order, the last one shorter.
    """
    view = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else memoryview(data).cast("B")
    hasher = xxhash.xxh3_128(prefix)
    size = len(view)
    if size <= CHUNK_BYTES:
        hasher.update(view)  # type: ignore[arg-type]
    else:
        digest = xxhash.xxh3_128_digest
        for start in range(0, size, CHUNK_BYTES):
            hasher.update(digest(view[start:start + CHUNK_BYTES]))  # type: ignore[arg-type]
    return "xxh3:" + hasher.hexdigest()


def hash_array(array: np.ndarray) -> str:
    """Hash of the values, their dtype and shape: the same bytes in another shape are another tensor.

    The shape is that of `np.ascontiguousarray`, which makes a 0-d array 1-d: a scalar and a one-element
    vector hash alike, as they always have.
    """
    contiguous = np.ascontiguousarray(array)
    prefix = f"{contiguous.dtype.str}{contiguous.shape}".encode()
    if contiguous.dtype.kind == "V" or contiguous.dtype.itemsize == 0:
        return content_hash(prefix, contiguous.tobytes())
    return content_hash(prefix, contiguous)


def hash_numeric(array: np.ndarray) -> str:
    """`hash_array` of a C-contiguous, non-empty numeric array, without its checks and conversions.

    The tensor probes hash hundreds of arrays per step; the checks cost more than hashing a small one.
    """
    return content_hash(f"{array.dtype.str}{array.shape or (1,)}".encode(), array)


def hash_text(text: str) -> str:
    return "xxh3:" + xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def finite_or_none(value: float) -> float | None:
    return None if value is None else float(value)


def summarize_array(array: np.ndarray, *, dtype_name: str | None = None) -> dict[str, Any]:
    """Tensor summary (docs/trace-format.md) computed with numpy; used by the TF probes and for batches."""
    contiguous = np.ascontiguousarray(array)
    summary: dict[str, Any] = {
        "shape": list(contiguous.shape),
        "dtype": dtype_name or str(contiguous.dtype),
        "numel": int(contiguous.size),
        "hash": hash_array(contiguous),
    }
    if contiguous.size == 0 or contiguous.dtype.kind not in "fiub":
        summary.update(norm=None, min=None, max=None, mean=None, max_abs=None, nan=0, inf=0,
                       zeros=int(contiguous.size - np.count_nonzero(contiguous)) if contiguous.size else 0)
        return summary
    values = contiguous.astype(np.float64, copy=False) if contiguous.dtype.kind in "iub" else contiguous
    with np.errstate(all="ignore"):
        low, high = float(np.min(values)), float(np.max(values))
        if math.isfinite(low) and math.isfinite(high):
            # min and max propagate NaN and are the infinities if any: no NaN or Inf to count, and the
            # largest magnitude is an extreme's (three passes less over a batch, every step).
            nan, inf, max_abs = 0, 0, max(abs(low), abs(high))
        else:
            nan = int(np.count_nonzero(np.isnan(values))) if values.dtype.kind == "f" else 0
            inf = int(np.count_nonzero(np.isinf(values))) if values.dtype.kind == "f" else 0
            max_abs = float(np.max(np.abs(values)))
        summary.update(
            norm=float(np.sqrt(np.sum(np.square(values, dtype=np.float64)))),
            min=low,
            max=high,
            mean=float(np.mean(values, dtype=np.float64)),
            max_abs=max_abs,
            nan=nan,
            inf=inf,
            zeros=int(contiguous.size - np.count_nonzero(contiguous)),
        )
    return summary


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

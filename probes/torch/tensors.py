"""Summaries (statistics plus content hash) of torch tensors, computed in as few passes as possible.

Cost is what matters here: every gradient, parameter and module output is summarised at every step. A CPU
float32/float64 tensor goes to the native kernel (probes/common/native_summary), which hashes and reduces
it in one pass. Elsewhere (GPU, half types, or no C compiler) torch reductions do it: each large tensor is
hashed and reduced while it is still in the CPU cache (hash, zero count, min/max, sum, norm back to back);
small tensors of one shape are stacked and reduced row-wise, a handful of ops for dozens of biases.
Statistics are fetched with one `.tolist()` per device, so a CUDA run synchronises once per group; NaN and
Inf are counted only when the norm says there are some.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from repro_audit.probes.common.hashing import hash_array, hash_numeric, summarize_array
from repro_audit.probes.common.native_summary import (
    BYTES,
    FLOAT32,
    FLOAT64,
    PreparedBatch,
    SummarySlots,
    kernel,
)
from repro_audit.probes.torch.distributed import gathered

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NUMERIC_DTYPES = frozenset({torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8,
                             torch.int16, torch.int32, torch.int64, torch.bool})
# Up to this many elements a tensor is stacked with others of its dtype and size: per-op overhead, not
# memory traffic, is then the cost. The stacked copy is at most this size times the group's length.
SMALL_NUMEL = 8192
# Zeros of a large float32/float64 CPU tensor are counted by numpy over chunks of this many elements,
# three times faster than torch.count_nonzero; the bool scratch stays in the L1/L2 cache.
ZERO_CHUNK = 1 << 16


@functools.cache
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Raw values as numpy without a copy where possible; bfloat16 travels as its int16 bit pattern."""
    tensor = gathered(tensor.detach())
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    return tensor.contiguous().numpy()


def values_for_file(tensor: torch.Tensor) -> np.ndarray:
    """Values as kept in safetensors files: numpy cannot hold bfloat16, so it is widened to float32."""
    tensor = gathered(tensor.detach())
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return np.ascontiguousarray(tensor.cpu().numpy())


def tensor_hash(tensor: torch.Tensor) -> str:
    tensor = tensor.detach()
    if (tensor.device.type == "cpu" and tensor.dtype in _NUMERIC_DTYPES and tensor.numel() > 0
            and tensor.is_contiguous() and not tensor.is_conj()):
        return hash_numeric(tensor.numpy())  # the common case: no conversion to make, no check to pay
    return hash_array(as_numpy(tensor))


def summarize(tensors: Sequence[torch.Tensor], *, count_zeros: bool = True) -> list[dict[str, Any]]:
    """Tensor summaries in the trace format, for many tensors at once.

    `count_zeros=False` leaves `zeros` null: module outputs, the largest tensors of a step, do not need it
    (dead units are measured by the health probe).
    """
    summaries: list[dict[str, Any]] = [{}] * len(tensors)
    tensors = [gathered(tensor) for tensor in tensors]  # FSDP's shards, whole: what the trace compares
    native = _native_summaries(tensors, count_zeros=count_zeros)
    float_index = []
    for i, tensor in enumerate(tensors):
        if i in native:
            summaries[i] = native[i]
        elif tensor.dtype in FLOAT_DTYPES and tensor.numel() > 0:
            float_index.append(i)
        else:
            summaries[i] = summarize_array(as_numpy(tensor), dtype_name=dtype_name(tensor.dtype))
    if float_index:
        floats = [tensors[i] for i in float_index]
        for i, summary in zip(float_index, _float_summaries(floats, count_zeros=count_zeros)):
            summaries[i] = summary
    return summaries


class SummaryBatch:
    """Summaries of tensors handed in one at a time, so none has to be kept until all are in.

    A large tensor is summarised when it is added, while it is likely still in the CPU cache; a small one
    (at most SMALL_NUMEL elements) is copied and summarised with the others of its size at `finish`, where
    stacking saves the per-op overhead. The copy keeps an in-place change after `add` out of its summary.
    """

    def __init__(self, *, count_zeros: bool = True) -> None:
        self.count_zeros = count_zeros
        self._done: list[dict[str, Any] | None] = []
        self._small: list[tuple[int, torch.Tensor]] = []
        native = kernel()
        self._slots = SummarySlots(native, threads=torch.get_num_threads()) if native is not None else None
        self.native = self._slots is not None  # whether `add_native` can be used
        self._in_slots: list[int] = []  # position by slot
        self._fixed: list[tuple[list[int], str, int]] = []  # shape, dtype, numel by slot

    def clear(self) -> None:
        """Forget what was added and not fetched (a step that failed half-way); the batch is reused."""
        self._done, self._small, self._in_slots, self._fixed = [], [], [], []
        if self._slots is not None:
            self._slots.take_arrays()
            self._slots.threads = torch.get_num_threads()

    def add(self, tensor: torch.Tensor) -> int:
        """Position of the tensor's summary in the list `finish` returns."""
        tensor = gathered(tensor)
        if self.native and tensor.dtype in NATIVE_KINDS and native_layout(tensor):
            return self.add_native(tensor.data_ptr(), tensor.numel(), tensor.dtype, tensor.shape)
        position = len(self._done)
        tensor = tensor.detach()
        if tensor.dtype in FLOAT_DTYPES and 0 < tensor.numel() <= SMALL_NUMEL:
            self._small.append((position, tensor.clone()))
            self._done.append(None)
        elif tensor.dtype in FLOAT_DTYPES and tensor.numel() > 0 and not self.count_zeros:
            self._done.append(_large_summary(tensor))
        else:
            self._done.append(summarize([tensor], count_zeros=self.count_zeros)[0])
        return position

    def add_native(self, address: int, numel: int, dtype: torch.dtype, shape: torch.Size) -> int:
        """`add` for a float32/float64 CPU tensor that the caller found contiguous, not conjugate and not
        negative (what `native_layout` checks), given its attributes: read now, by the kernel, into its
        slot; the Python summary is made in `finish`."""
        position = len(self._done)
        slots = self._slots
        if slots is None:
            raise RuntimeError("add_native needs the native kernel (see `native`)")
        prefix = _PREFIXES.get((dtype, shape)) or _prefix_of(dtype, shape)
        slots.add(address, numel, double=dtype is torch.float64, prefix=prefix, zeros=self.count_zeros)
        self._in_slots.append(position)
        self._fixed.append((list(shape), dtype_name(dtype), numel))
        self._done.append(None)
        return position

    def finish(self) -> list[dict[str, Any]]:
        """Every summary, in the order added; the batch is empty (and reusable) afterwards."""
        if self._in_slots:
            assert self._slots is not None
            stats, counts, digests = self._slots.take_arrays()
            records = native_records(self._fixed, digests, stats, counts, count_zeros=self.count_zeros)
            for position, record in zip(self._in_slots, records):
                self._done[position] = record
        if self._small:
            held = summarize([t for _, t in self._small], count_zeros=self.count_zeros)
            for (position, _), summary in zip(self._small, held):
                self._done[position] = summary
        done = self._done
        self.clear()
        return done  # type: ignore[return-value]


def native_records(fixed: Sequence[tuple[list[int], str, int]], digests: Sequence[str], stats: np.ndarray,
                   counts: np.ndarray, *, count_zeros: bool) -> list[dict[str, Any]]:
    """Summary records of the kernel's results, in a few numpy operations instead of float arithmetic per
    tensor: `fixed` holds each tensor's shape, dtype name and numel, `stats` its [min, max, sum, sum of
    squares] and `counts` its [zeros, NaN, Inf] as rows; `_record_of` makes the same from torch's numbers."""
    numels = np.fromiter((numel for _, _, numel in fixed), dtype=np.float64, count=len(fixed))
    with np.errstate(invalid="ignore"):
        norms = np.sqrt(stats[:, 3])
        means = stats[:, 2] / numels
        max_abs = np.maximum(np.abs(stats[:, 0]), np.abs(stats[:, 1]))
    max_abs[counts[:, 1] > 0] = np.nan
    zeros = counts[:, 0].tolist() if count_zeros else [None] * len(fixed)
    return [{"shape": list(shape), "dtype": dtype, "numel": numel, "hash": digest, "norm": norm, "min": low,
             "max": high, "mean": mean, "max_abs": largest, "nan": nan, "inf": inf, "zeros": zero}
            for (shape, dtype, numel), digest, norm, low, high, mean, largest, nan, inf, zero in zip(
                fixed, digests, norms.tolist(), stats[:, 0].tolist(), stats[:, 1].tolist(), means.tolist(),
                max_abs.tolist(), counts[:, 1].tolist(), counts[:, 2].tolist(), zeros)]


def _float_summaries(tensors: list[torch.Tensor], *, count_zeros: bool) -> list[dict[str, Any]]:
    with torch.no_grad():
        tensors = [t.detach() for t in tensors]
        hashes: list[str] = [""] * len(tensors)
        zeros: list[int | None] = [None] * len(tensors)
        pending = _PendingStats(len(tensors))
        small: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, tensor in enumerate(tensors):
            if tensor.numel() <= SMALL_NUMEL:
                small[(tensor.dtype, tensor.numel(), tensor.device)].append(i)
                continue
            plain = _plain_layout(tensor)  # a copy only of a view that is not contiguous, one at a time
            # Hash first: it streams the tensor into the cache, where the reductions below find it.
            hashes[i] = _hash_plain(plain)
            if count_zeros:
                zeros[i] = _count_zeros(plain, pending, i)
            low, high = torch.aminmax(plain)
            pending.add_scalars(i, plain.device, (_sum_of_squares(plain), low, high, _sum(plain)))
        # A stacked group holds at most as many elements as the largest tensor (or 64Ki): memory stays
        # within one extra copy of the largest tensor however many small tensors there are.
        limit = max(max(t.numel() for t in tensors), 1 << 16)
        for members in small.values():
            rows_per_chunk = max(1, limit // tensors[members[0]].numel())
            for start in range(0, len(members), rows_per_chunk):
                _summarize_group(tensors, members[start:start + rows_per_chunk], hashes, pending,
                                 count_zeros=count_zeros)
        stats, counts = pending.fetch()
    return [_summary(tensor, hashes[i], stats[i], counts.get(i, zeros[i])) for i, tensor in enumerate(tensors)]


# numpy's name of each dtype the kernel can take: the hash input is that of `hash_numeric`.
NUMPY_NAMES = {dtype: torch.empty(0, dtype=dtype).numpy().dtype.str for dtype in _NUMERIC_DTYPES}
NATIVE_KINDS = {torch.float32: FLOAT32, torch.float64: FLOAT64}


def _native_summaries(tensors: Sequence[torch.Tensor], *, count_zeros: bool) -> dict[int, dict[str, Any]]:
    """{index: summary} of the tensors the kernel takes, all in one call on torch's intra-op threads
    (training waits for these summaries, so its threads are free)."""
    native = kernel()
    if native is None:
        return {}
    chosen = [i for i, t in enumerate(tensors) if t.dtype in NATIVE_KINDS and native_layout(t)]
    if not chosen:
        return {}
    batch = PreparedBatch(native, [(tensors[i].data_ptr(), tensors[i].numel(), NATIVE_KINDS[tensors[i].dtype],
                                    hash_prefix(tensors[i])) for i in chosen])
    batch.run(zeros=count_zeros, threads=torch.get_num_threads())
    fixed = [(list(tensors[i].shape), dtype_name(tensors[i].dtype), tensors[i].numel()) for i in chosen]
    return dict(zip(chosen, native_records(fixed, batch.digests(), batch.stats, batch.counts,
                                           count_zeros=count_zeros)))


def tensor_hashes(tensors: Sequence[torch.Tensor]) -> list[str]:
    """`tensor_hash` of many tensors; those in CPU memory are hashed in one native call on several threads."""
    native = kernel()
    chosen = ([i for i, t in enumerate(tensors) if t.dtype in NUMPY_NAMES and native_layout(t)]
              if native is not None else [])
    found = native.summarize_many([(tensors[i].data_ptr(), tensors[i].numel() * tensors[i].element_size(), BYTES,
                                    hash_prefix(tensors[i])) for i in chosen],
                                  threads=torch.get_num_threads()) if native is not None and chosen else []
    hashes = {i: summary.digest for i, summary in zip(chosen, found)}
    return [hashes[i] if i in hashes else tensor_hash(t) for i, t in enumerate(tensors)]


def native_layout(tensor: torch.Tensor) -> bool:
    return (tensor.is_cpu and tensor.layout == torch.strided and tensor.numel() > 0
            and tensor.is_contiguous() and not tensor.is_neg() and not tensor.is_conj())


_PREFIXES: dict[tuple[torch.dtype, torch.Size], bytes] = {}
_PREFIX_CACHE_LIMIT = 4096  # shapes vary with sequence length: the cache starts over rather than grow


def hash_prefix(tensor: torch.Tensor) -> bytes:
    """What `hash_numeric` hashes before the values: numpy's dtype string and shape (0-d as (1,))."""
    return _PREFIXES.get((tensor.dtype, tensor.shape)) or _prefix_of(tensor.dtype, tensor.shape)


def _prefix_of(dtype: torch.dtype, shape: torch.Size) -> bytes:
    if len(_PREFIXES) >= _PREFIX_CACHE_LIMIT:
        _PREFIXES.clear()
    prefix = _PREFIXES[(dtype, shape)] = f"{NUMPY_NAMES[dtype]}{tuple(shape) or (1,)}".encode()
    return prefix


def _large_summary(tensor: torch.Tensor) -> dict[str, Any]:
    """One large float tensor without its zeros: the per-batch bookkeeping of `_float_summaries` costs
    more than the reductions for a tensor of a few hundred KiB, and module outputs come one at a time."""
    with torch.no_grad():
        plain = _plain_layout(tensor)
        digest = _hash_plain(plain)
        low, high = torch.aminmax(plain)
        sum_of_squares, minimum, maximum, total = torch.stack([_sum_of_squares(plain), low, high,
                                                               _sum(plain)]).tolist()
    return _summary(plain, digest, [math.sqrt(sum_of_squares), minimum, maximum, total], None)


def _summary(tensor: torch.Tensor, digest: str, stats: Sequence[float], zeros: int | None) -> dict[str, Any]:
    """The trace's summary of a float tensor from its hash and [norm, min, max, sum]."""
    nonfinite = not math.isfinite(stats[0])
    nan = int(torch.isnan(tensor).sum()) if nonfinite else 0
    inf = int(torch.isinf(tensor).sum()) if nonfinite else 0
    return _record(tensor, digest, stats, nan, inf, zeros)


def _record(tensor: torch.Tensor, digest: str, stats: Sequence[float], nan: int, inf: int,
            zeros: int | None) -> dict[str, Any]:
    return _record_of(tensor.shape, tensor.dtype, digest, stats, nan, inf, zeros)


def _record_of(shape: torch.Size, dtype: torch.dtype, digest: str, stats: Sequence[float], nan: int, inf: int,
               zeros: int | None) -> dict[str, Any]:
    norm, minimum, maximum, total = stats
    numel = math.prod(shape)
    return {
        "shape": list(shape),
        "dtype": dtype_name(dtype),
        "numel": numel,
        "hash": digest,
        "norm": norm,
        "min": minimum,
        "max": maximum,
        "mean": total / numel,
        "max_abs": float("nan") if nan else max(abs(minimum), abs(maximum)),
        "nan": nan,
        "inf": inf,
        "zeros": zeros,
    }


def _summarize_group(tensors: list[torch.Tensor], members: list[int], hashes: list[str],
                     pending: _PendingStats, *, count_zeros: bool) -> None:
    """Small tensors of one dtype and size, stacked and reduced row-wise: a few ops for the whole group."""
    matrix = torch.stack([tensors[i].reshape(-1) for i in members])
    low, high = torch.aminmax(matrix, dim=1)
    wide = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    norms = torch.linalg.vector_norm(wide, dim=1)
    pending.add_rows(members, matrix.device, torch.stack([norms, low, high, _sum(matrix, dim=1)], dim=1))
    if count_zeros:
        pending.add_counts(members, matrix.device, (matrix == 0).sum(dim=1))
    for i in members:
        hashes[i] = _hash_plain(_plain_layout(tensors[i]))


class _PendingStats:
    """Statistics still on their device, fetched with one `.tolist()` per device and kind.

    Per tensor [norm, min, max, sum], either as four 0-d tensors (large tensors: no op to assemble them;
    the first is the squared norm) or as a row of a group's [k, 4] matrix (small tensors), and zero
    counts left on a device.
    """

    def __init__(self, n: int) -> None:
        self.stats: list[list[float]] = [[]] * n
        self.scalars: dict[torch.device, tuple[list[int], list[torch.Tensor]]] = {}
        self.rows: dict[torch.device, list[tuple[list[int], torch.Tensor]]] = defaultdict(list)
        self.counts: dict[torch.device, list[tuple[list[int], torch.Tensor]]] = defaultdict(list)

    def add_scalars(self, index: int, device: torch.device, values: tuple[torch.Tensor, ...]) -> None:
        members, parts = self.scalars.setdefault(device, ([], []))
        members.append(index)
        parts.extend(values)

    def add_rows(self, members: list[int], device: torch.device, rows: torch.Tensor) -> None:
        self.rows[device].append((members, rows.double()))

    def add_counts(self, members: list[int], device: torch.device, counts: torch.Tensor) -> None:
        self.counts[device].append((members, counts.reshape(-1)))

    def fetch(self) -> tuple[list[list[float]], dict[int, int]]:
        # torch.stack promotes to the widest dtype, which holds every value of the narrower ones exactly.
        for members, parts in self.scalars.values():
            values = torch.stack(parts).tolist()
            for k, i in enumerate(members):
                sum_of_squares, low, high, total = values[4 * k:4 * k + 4]
                self.stats[i] = [math.sqrt(sum_of_squares), low, high, total]
        for groups in self.rows.values():
            rows = torch.cat([rows for _, rows in groups]).tolist()
            for i, row in zip([i for members, _ in groups for i in members], rows):
                self.stats[i] = row
        counts: dict[int, int] = {}
        for groups in self.counts.values():
            values = torch.cat([c for _, c in groups]).tolist()
            for i, count in zip([i for members, _ in groups for i in members], values):
                counts[i] = int(count)
        return self.stats, counts


def _plain_layout(tensor: torch.Tensor) -> torch.Tensor:
    """Detached and C-contiguous (a copy only for views that are not), so hash and stats read one layout."""
    tensor = tensor.detach()
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def _hash_plain(tensor: torch.Tensor) -> str:
    """`tensor_hash` of a detached, contiguous, non-empty float tensor, without the general checks."""
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return hash_numeric(tensor.numpy())


def _sum_of_squares(tensor: torch.Tensor) -> torch.Tensor:
    """The squared L2 norm as one BLAS dot product: 1.4x faster than `vector_norm` on CPU, and it
    overflows exactly where `vector_norm` does (both accumulate in the tensor's float type)."""
    flat = (tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()).reshape(-1)
    return torch.dot(flat, flat)


def _sum(tensor: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    # A float32 sum (float64 for float64 tensors) is five times cheaper than always summing in float64
    # and exact enough for a mean; half types are summed in float32 so they cannot overflow.
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.sum(dtype=dtype) if dim is None else tensor.sum(dim=dim, dtype=dtype)


def _count_zeros(tensor: torch.Tensor, pending: _PendingStats, index: int) -> int | None:
    """Elements equal to zero (+0.0 and -0.0); None when the count is left on the device for `pending`."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        flat = tensor.numpy().reshape(-1)
        scratch = np.empty(min(flat.size, ZERO_CHUNK), dtype=np.bool_)
        zeros = 0
        for start in range(0, flat.size, ZERO_CHUNK):
            part = flat[start:start + ZERO_CHUNK]
            out = scratch[:part.size]
            np.equal(part, 0, out=out)
            zeros += int(np.count_nonzero(out))
        return zeros
    pending.add_counts([index], tensor.device, tensor.numel() - torch.count_nonzero(tensor))
    return None


def summarize_one(tensor: torch.Tensor) -> dict[str, Any]:
    return summarize([tensor])[0]


def flatten_tensors(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Named tensors inside a batch or module output (tensors, tuples, lists, mappings such as a
    HuggingFace BatchEncoding, dataclasses), each named by its path: `0.input_ids`, `1`, `logits`."""
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, torch.Tensor):
        found.append((prefix or "0", value))
    elif isinstance(value, Mapping):
        for key in value:
            found.extend(flatten_tensors(value[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.extend(flatten_tensors(item, f"{prefix}.{index}" if prefix else str(index)))
    elif hasattr(value, "__dataclass_fields__"):
        for key in value.__dataclass_fields__:
            found.extend(flatten_tensors(getattr(value, key), f"{prefix}.{key}" if prefix else key))
    return found


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors of `flatten_tensors`, in its order, without their names: module hooks need only these,
    after every module call."""
    if type(value) is torch.Tensor:
        return [value]
    found: list[torch.Tensor] = []
    _collect(value, found)
    return found


def _collect(value: Any, found: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, found)
    elif hasattr(value, "__dataclass_fields__"):
        for key in value.__dataclass_fields__:
            _collect(getattr(value, key), found)


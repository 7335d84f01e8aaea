"""`tensors.unpack` of a layout that recurs every step: its plan made once, its summaries made together.

Every step of one trace hands back the same layout: the same keys, the same segments of the same flat
vectors, the same large tensors. Working that out again per array (a view, a hash prefix, a kernel
argument row) and then building each summary in Python calls of its own cost about as much as the
kernel's hashing of the ~100 MB the Keras benchmark's MobileNetV2 returns (issue 22). Here it is done
once per layout and run-time shapes (like torch's `repeated_summaries`): a step reads its outputs'
addresses into a prepared kernel batch, runs it, and turns the statistics of all arrays into summaries
with a few numpy operations. The summaries are `tensors.unpack`'s, number for number: an array whose
statistics need numpy's exact counts (NaN, Inf, empty, a half type) goes through `tensors.unpack`'s own
per-array functions. Without the kernel, or where the graph reduced the large tensors, `tensors.unpack`
does all of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro_audit.probes.common.native_summary import BYTES, FLOAT32, FLOAT64, NativeSummary, PreparedBatch, kernel
from repro_audit.probes.tf import tensors
from repro_audit.probes.tf.bundle_hashes import kernel_threads, raw_prefix
from repro_audit.probes.tf.tensors import HASH_ONLY, Layout, counts_zeros, hash_only, to_numpy

_KINDS = {"float32": FLOAT32, "float64": FLOAT64}
_PLANS_PER_LAYOUT = 8  # run-time shapes kept per layout (a last, smaller batch adds one)
HASHED, ROW, KERNEL = 0, 1, 2  # how an array is summarised: hash only, numpy's reduceat row, the kernel's


def unpack(layout: Layout, outputs: dict[str, Any], *, keep_values: bool = False
           ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """`tensors.unpack(layout, outputs, keep_values=...)`, with the work that is the same every step done once."""
    native = kernel()
    if native is None or layout.graph_stats:
        return tensors.unpack(layout, outputs, keep_values=keep_values)
    runtime = tuple(tuple(int(n) for n in to_numpy(shape)) for shape in outputs["shapes"])
    plan = layout.plans.get(runtime)
    if plan is None:
        if len(layout.plans) >= _PLANS_PER_LAYOUT:
            layout.plans.clear()
        plan = layout.plans[runtime] = UnpackPlan(layout, runtime, native)
    arrays = plan.arrays(outputs)
    if arrays is None:  # not the arrays the plan was made for: never expected, but never a wrong summary
        return tensors.unpack(layout, outputs, keep_values=keep_values)
    return plan.unpack(layout, outputs, *arrays, keep_values=keep_values)


@dataclass
class _Group:
    """One flat vector of `pack`: where its members start, and which get numpy's reduceat row."""

    name: str
    dtype: np.dtype[Any]
    size: int
    positions: slice  # its members' positions in the plan
    byte_offsets: np.ndarray  # each member's start, in bytes
    spans: list[tuple[int, int, tuple[int, ...]]]  # each member's start, end and shape, in elements
    row_starts: np.ndarray  # starts of the members with a row (non-empty, statistics wanted)
    row_positions: np.ndarray  # their positions in the plan


class UnpackPlan:
    """What `tensors.unpack` works out per array, worked out once for a layout and its run-time shapes.

    Positions are `tensors.unpack`'s order: every flat vector's members, then the separate tensors.
    """

    def __init__(self, layout: Layout, runtime: Sequence[tuple[int, ...]], native: NativeSummary) -> None:
        found_shapes = iter(runtime)
        shapes = [shape if shape is not None else next(found_shapes) for shape in layout.shapes]
        self.keys: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[str] = []
        self.numels: list[int] = []
        self.modes: list[int] = []
        self.kinds: list[int | None] = []  # the kernel's kind where it reduces the array
        self.groups: list[_Group] = []
        for name, members in layout.groups.items():
            dtype_name = name.split(":")[0]
            dtype = np.dtype(dtype_name)
            first, start, spans, row_starts, row_positions = len(self.keys), 0, [], [], []
            for index in members:
                numel = math.prod(shapes[index])
                position = len(self.keys)
                if name.endswith(HASH_ONLY):
                    mode = HASHED
                elif ":" not in name and numel > 0:
                    mode = ROW
                    row_starts.append(start)
                    row_positions.append(position)
                else:
                    mode = KERNEL
                self._add(layout.keys[index], shapes[index], dtype_name, mode)
                spans.append((start, start + numel, shapes[index]))
                start += numel
            self.groups.append(_Group(name, dtype, start, slice(first, len(self.keys)),
                                      np.array([a for a, _, _ in spans], dtype=np.int64) * dtype.itemsize, spans,
                                      np.array(row_starts, dtype=np.int64), np.array(row_positions, dtype=np.int64)))
        self.separate_at = len(self.keys)
        self.separate: list[tuple[tuple[int, ...], np.dtype[Any]]] = []
        for index in layout.separate:
            key = layout.keys[index]
            self._add(key, shapes[index], layout.dtypes[index], HASHED if hash_only(key) else KERNEL)
            self.separate.append((shapes[index], np.dtype(layout.dtypes[index])))
        self.numel_array = np.array(self.numels, dtype=np.int64)
        kernel_stats = [kind is not None for kind in self.kinds]
        self.kernel_positions = np.flatnonzero(kernel_stats)
        # Where the kernel's statistics make the summary (else numpy's, below): float32/64, not empty.
        self.kernel_may_summarise = np.array([kind is not None and numel > 0 for kind, numel in
                                              zip(self.kinds, self.numels)], dtype=bool)[self.kernel_positions]
        self.slow_kernel = [p for p, mode in enumerate(self.modes) if mode == KERNEL and self.kinds[p] is None]
        self.keeps_zeros = [counts_zeros(key) for key in self.keys]
        self.zeros = any(kernel_stats)
        items = []
        for position, (shape, dtype_name, kind) in enumerate(zip(self.shapes, self.dtypes, self.kinds)):
            dtype = np.dtype(dtype_name)
            numel = self.numels[position]
            items.append((0, numel * dtype.itemsize if kind is None else numel, BYTES if kind is None else kind,
                          raw_prefix(dtype.str, shape)))
        self.batch = PreparedBatch(native, items)
        self.addresses = np.zeros(len(items), dtype=np.int64)

    def _add(self, key: str, shape: tuple[int, ...], dtype: str, mode: int) -> None:
        self.keys.append(key)
        self.shapes.append(shape)
        self.dtypes.append(dtype)
        self.numels.append(math.prod(shape))
        self.modes.append(mode)
        self.kinds.append(_KINDS.get(dtype) if mode == KERNEL else None)

    def arrays(self, outputs: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """The flat vectors and the separate arrays of a step; None where one is not what the plan expects."""
        flats = [to_numpy(outputs["flat"][group.name]) for group in self.groups]
        separate = [np.ascontiguousarray(to_numpy(tensor)) for tensor in outputs["separate"]]
        if len(separate) != len(self.separate) or any(
                flat.dtype != group.dtype or flat.size != group.size or flat.ndim != 1 or not flat.flags.c_contiguous
                for flat, group in zip(flats, self.groups)) or any(
                array.shape != shape or array.dtype != dtype for array, (shape, dtype) in zip(separate, self.separate)):
            return None
        return flats, separate

    def unpack(self, layout: Layout, outputs: dict[str, Any], flats: list[np.ndarray], separate: list[np.ndarray],
               *, keep_values: bool) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
        addresses = self.addresses
        for flat, group in zip(flats, self.groups):
            np.add(group.byte_offsets, flat.ctypes.data, out=addresses[group.positions])
        addresses[self.separate_at:] = [array.ctypes.data for array in separate]
        self.batch.move(addresses)
        self.batch.run(zeros=self.zeros, threads=kernel_threads())
        digests = self.batch.digests()
        records = self._records(flats, separate, digests)
        summaries = dict(zip(self.keys, records))
        values: dict[str, np.ndarray] = {}
        if keep_values:
            values = dict(zip(self.keys, self._views(flats, separate)))
        tensors.unpack_others(layout, outputs, summaries, values if keep_values else None)
        return summaries, values

    def _records(self, flats: list[np.ndarray], separate: list[np.ndarray], digests: list[str]
                 ) -> list[dict[str, Any]]:
        """Every array's summary: statistics from the kernel or numpy's rows, all turned into numbers at once."""
        n = len(self.keys)
        table = np.zeros((n, 5), dtype=np.float64)  # sum, sum of squares, min, max, zeros
        fast = np.zeros(n, dtype=bool)
        for flat, group in zip(flats, self.groups):
            if len(group.row_starts):
                columns = tensors.segment_columns(flat, group.row_starts)
                table[group.row_positions, :4] = columns[:, :4]
                table[group.row_positions, 4] = self.numel_array[group.row_positions] - columns[:, 4]
                fast[group.row_positions] = np.isfinite(columns).all(axis=1)
        at = self.kernel_positions
        if len(at):
            stats, counts = self.batch.stats[at], self.batch.counts[at]
            table[at, 0], table[at, 1], table[at, 2], table[at, 3] = stats[:, 2], stats[:, 3], stats[:, 0], stats[:, 1]
            table[at, 4] = counts[:, 0]
            fast[at] = self.kernel_may_summarise & (counts[:, 1] == 0) & (counts[:, 2] == 0)
        chosen = np.flatnonzero(fast)
        total, sumsq, low, high, zeros = table[chosen].T
        numels = self.numel_array[chosen]
        with np.errstate(all="ignore"):
            norms, means = np.sqrt(sumsq), total / numels
            max_abs = np.where(high > -low, high, -low)  # max(-low, high), as `tensors._summary` takes it
        records: list[dict[str, Any]] = [{}] * n
        keys, shapes, dtypes, keeps_zeros = self.keys, self.shapes, self.dtypes, self.keeps_zeros
        for position, numel, norm, minimum, maximum, mean, largest, zero in zip(
                chosen.tolist(), numels.tolist(), norms.tolist(), low.tolist(), high.tolist(), means.tolist(),
                max_abs.tolist(), zeros.astype(np.int64).tolist()):
            records[position] = {"shape": list(shapes[position]), "dtype": dtypes[position], "numel": numel,
                                 "hash": digests[position], "norm": norm, "min": minimum, "max": maximum,
                                 "mean": mean, "max_abs": largest, "nan": 0, "inf": 0,
                                 "zeros": zero if keeps_zeros[position] else None}
        for position in np.flatnonzero(~fast).tolist():
            mode = self.modes[position]
            if mode == HASHED:
                records[position] = {"shape": list(shapes[position]), "dtype": dtypes[position],
                                     "numel": self.numels[position], "hash": digests[position]}
            else:  # NaN, Inf, empty, a half type: numpy's exact counts, as `tensors.unpack` gives them
                array = self._view(position, flats, separate)
                records[position] = tensors.summary_or_full(None, False, array, dtypes[position],
                                                            digests[position], keys[position])
        return records

    def _view(self, position: int, flats: list[np.ndarray], separate: list[np.ndarray]) -> np.ndarray:
        if position >= self.separate_at:
            return separate[position - self.separate_at]
        for flat, group in zip(flats, self.groups):
            if group.positions.start <= position < group.positions.stop:
                start, end, shape = group.spans[position - group.positions.start]
                return flat[start:end].reshape(shape)
        raise IndexError(position)

    def _views(self, flats: list[np.ndarray], separate: list[np.ndarray]) -> list[np.ndarray]:
        views = []
        for flat, group in zip(flats, self.groups):
            views.extend(flat[start:end].reshape(shape) for start, end, shape in group.spans)
        return views + separate

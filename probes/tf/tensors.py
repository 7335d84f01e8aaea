"""Tensor summaries (docs/trace-format.md) of TensorFlow tensors, many at a time and cheaply.

Hundreds of tensors are summarised per step (gradients, parameters, optimizer state, layer outputs). One
`.numpy()` and one numpy summary per tensor costs more than a small model's whole step, so `pack` flattens
every small floating tensor of a step into one vector per dtype inside the graph (most large ones come
back as they are). `unpack` computes the statistics of the small ones with a few numpy `reduceat` passes,
then hashes every array, and reduces the large ones, in one call of the native kernel (`bundle_hashes`).
The hash is `hash_array`'s (dtype, shape, raw bytes), so a summary made here equals `summarize_array` of
the same values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro_audit.probes.common.hashing import content_hash, hash_array, summarize_array
from repro_audit.probes.common.native_summary import Summary, kernel
from repro_audit.probes.tf.bundle_hashes import hashes_and_stats, raw_prefix


def dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    return str(name).replace("_ref", "")


def to_numpy(value: Any) -> np.ndarray:
    """Dense numpy values of a tensor, variable (Keras or TF) or IndexedSlices."""
    import tensorflow as tf

    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, tf.IndexedSlices):
        value = tf.convert_to_tensor(value)
    if hasattr(value, "_numpy"):  # an EagerTensor: its buffer, not `.numpy()`'s copy (we only read it)
        return np.asarray(value._numpy())
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    if hasattr(value, "value") and hasattr(value.value, "numpy"):  # KerasVariable
        return np.asarray(value.value.numpy())
    return np.asarray(value)


def summarize(value: Any) -> dict[str, Any]:
    array = to_numpy(value)
    return summarize_array(_hashable(array), dtype_name=dtype_name(getattr(value, "dtype", array.dtype)))


def hash_raw(dtype_str: str, shape: Sequence[int], buffer: Any) -> str:
    """`hash_array` of an array given as its dtype string, shape and raw bytes (a slice of a bundle)."""
    return content_hash(raw_prefix(dtype_str, tuple(shape)), buffer)


def _hashable(array: np.ndarray) -> np.ndarray:
    # numpy has no bfloat16: ml_dtypes arrays are described by their float32 values.
    if array.dtype.kind == "V" or array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


def named_tensors(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Named tensors inside a batch (tensors, numpy arrays, dicts, lists, tuples)."""
    import tensorflow as tf

    found: list[tuple[str, Any]] = []
    if isinstance(value, (np.ndarray, tf.Tensor, tf.Variable)) or (np.isscalar(value) and not isinstance(value, str)):
        found.append((prefix or "0", value))
    elif isinstance(value, dict):
        for key in value:
            found.extend(named_tensors(value[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.extend(named_tensors(item, f"{prefix}.{index}" if prefix else str(index)))
    return found


@dataclass
class Layout:
    """Static description of what `pack` put where: keys, dtypes and shapes in order."""

    keys: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...] | None]  # None: known only at run time (returned in "shapes")
    groups: dict[str, list[int]]  # floating dtype -> indices packed in its vector
    others: list[int]  # indices returned as they are
    graph_stats: list[int] = field(default_factory=list)  # indices whose statistics the graph computed
    # (only where there is no native kernel: elsewhere the kernel reduces large tensors as it hashes them)
    separate: list[int] = field(default_factory=list)  # large indices returned as their own tensors
    # repeated_unpack's plans for this layout, by run-time shapes: made on a step's first unpack, reused after.
    plans: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)


FLOAT_NAMES = ("float16", "float32", "float64")
HASH_ONLY = ":hash"  # suffix of a group whose tensors get a hash but no statistics (optimizer state)
GRAPH_STATS = ":stats"  # suffix of a group of large state tensors: statistics not from numpy's reduceat
# From this many elements a tensor's statistics are reduced by the native kernel in the pass that hashes it
# (or, without the kernel, in the graph: Eigen, on every core) rather than by numpy's reduceat; below it, one
# numpy pass over all the small tensors together costs less than a kernel item or a few graph ops each.
# Reducing ~250 large tensors in the graph cost about 15 ms of a 95 ms step on the fixture Transformer; the
# kernel, which reads them anyway to hash them, adds about a millisecond.
LARGE_NUMEL = 1 << 14
STATE_PREFIXES = ("parameters/", "buffers/", "optimizer/", "rng/")


def hash_only(key: str) -> bool:
    """Optimizer state and generator states are compared by hash; their statistics are never read."""
    return key.startswith(("optimizer/", "rng/")) or key.endswith("seed_generator.state")


def counts_zeros(key: str) -> bool:
    """Layer outputs, the largest tensors of a step, leave `zeros` null as torch's do (the costliest count)."""
    return not key.startswith("module_outputs/")


def plan_layout(keys: Sequence[str], dtypes: Sequence[str], shapes: Sequence[tuple[int, ...] | None], *,
                hash_only: Callable[[str], bool] = lambda key: False, separate_state: bool = False,
                reduce_in_graph: bool | None = None) -> Layout:
    """Where each tensor goes: a dtype group of the flat vectors, its own output, or `others` (not float).

    Large tensors get their statistics from the native kernel as it hashes them (`reduce_in_graph`, by
    default where there is no kernel: from the graph) and are returned as they are, without the copy into a
    flat vector. Large state (parameters, optimizer slots) is returned that way only with `separate_state`:
    such an output aliases the variable, so the caller must let go of it before the next update (or the
    update copies the variable) and keeps the pre-step state elsewhere (StepProgram's shadows). Otherwise it
    stays in a flat vector, whose copy is the snapshot a replay restores.
    """
    if reduce_in_graph is None:  # the graph reduces large tensors only where the kernel cannot
        reduce_in_graph = kernel() is None
    layout = Layout(list(keys), list(dtypes), list(shapes), {}, [])
    for index, (key, dtype, shape) in enumerate(zip(keys, dtypes, shapes)):
        if dtype not in FLOAT_NAMES:
            layout.others.append(index)
            continue
        large = shape is not None and math.prod(shape) >= LARGE_NUMEL
        if large and not hash_only(key) and reduce_in_graph:
            layout.graph_stats.append(index)
        if large and (separate_state or not key.startswith(STATE_PREFIXES)):
            layout.separate.append(index)
        elif hash_only(key):
            layout.groups.setdefault(dtype + HASH_ONLY, []).append(index)
        else:
            layout.groups.setdefault(dtype + (GRAPH_STATS if large else ""), []).append(index)
    return layout


def pack(named: Sequence[tuple[str, Any]], *, hash_only: Callable[[str], bool] = lambda key: False,
         separate_state: bool = False) -> tuple[Layout, dict[str, Any]]:
    """Graph (or eager) ops that flatten `named` tensors into one vector per dtype plus statistics.

    Statistics of small tensors are computed afterwards by numpy over the one buffer (`np.*.reduceat`): a
    few graph ops per tensor would cost more than the step of a small model. Large tensors get theirs from
    the kernel afterwards, or here where there is none (`plan_layout`).
    """
    import tensorflow as tf

    tensors = []
    for _, value in named:
        if isinstance(value, tf.IndexedSlices):
            value = tf.convert_to_tensor(value)
        tensors.append(tf.convert_to_tensor(value))
    shapes = [tuple(int(n) for n in t.shape) if t.shape.is_fully_defined() else None for t in tensors]
    layout = plan_layout([key for key, _ in named], [t.dtype.name for t in tensors], shapes, hash_only=hash_only,
                         separate_state=separate_state)
    outputs: dict[str, Any] = {"flat": {}, "others": [tensors[i] for i in layout.others],
                               "shapes": [tf.shape(tensors[i]) for i, s in enumerate(shapes) if s is None],
                               "separate": [tensors[i] for i in layout.separate]}
    for name, members in layout.groups.items():
        outputs["flat"][name] = tf.concat([tf.reshape(tensors[i], [-1]) for i in members], axis=0)
    if layout.graph_stats:
        outputs["stats"] = tf.stack([_stats_row(tensors[i]) for i in layout.graph_stats])
    return layout, outputs


def _stats_row(tensor: Any) -> Any:
    """(sum, sum of squares, min, max) of one tensor, as float64; zeros are counted by numpy (no temporary)."""
    import tensorflow as tf

    flat = tf.reshape(tensor if tensor.dtype in (tf.float32, tf.float64) else tf.cast(tensor, tf.float32), [-1])
    # L2Loss is one fused, multi-threaded pass (sum(x * x) / 2); a dot product here is four times slower.
    row = tf.stack([tf.reduce_sum(flat), 2 * tf.nn.l2_loss(flat), tf.reduce_min(flat), tf.reduce_max(flat)])
    return tf.cast(row, tf.float64)


def unpack(layout: Layout, outputs: dict[str, Any], *, keep_values: bool = False
           ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Summaries by key (and, if asked, the values) from what `pack`'s ops returned."""
    summaries: dict[str, dict[str, Any]] = {}
    values: dict[str, np.ndarray] = {}
    runtime_shapes = iter([tuple(int(n) for n in to_numpy(s)) for s in outputs["shapes"]])
    shapes = [shape if shape is not None else next(runtime_shapes) for shape in layout.shapes]
    graph_rows = dict(zip(layout.graph_stats, to_numpy(outputs["stats"]).tolist())) if layout.graph_stats else {}
    found: list[_Found] = []  # summarised together below, once every array is in hand
    for name, members in layout.groups.items():
        flat = to_numpy(outputs["flat"][name])
        sizes = [math.prod(shapes[index]) for index in members]
        no_stats = name.endswith(HASH_ONLY)
        dtype = name.split(":")[0]
        rows, finite = _segment_stats(flat, sizes) if ":" not in name else ([], [])
        offset = 0
        for position, index in enumerate(members):
            numel = sizes[position]
            key = layout.keys[index]
            segment = flat[offset:offset + numel].reshape(shapes[index])
            if no_stats:
                found.append(_Found(key, segment, dtype, None, True, hash_only=True))
            else:
                row = rows[position] if rows else graph_rows.get(index)  # None: the kernel reduces it
                found.append(_Found(key, segment, dtype, row, finite[position] if finite else True))
            if keep_values:
                values[key] = segment
            offset += numel
    for index, tensor in zip(layout.separate, outputs["separate"]):
        array = np.ascontiguousarray(to_numpy(tensor))
        key = layout.keys[index]
        found.append(_Found(key, array, layout.dtypes[index], graph_rows.get(index), True,
                            hash_only=hash_only(key)))
        if keep_values:
            values[key] = array
    digests, reduced = hashes_and_stats([item.array for item in found],
                                        [not item.hash_only and item.row is None for item in found])
    for item, digest, stats in zip(found, digests, reduced):
        array = item.array
        if item.hash_only:
            summaries[item.key] = {"shape": list(array.shape), "dtype": item.dtype, "numel": int(array.size),
                                   "hash": digest}
        elif item.row is None:
            summaries[item.key] = summary_of_kernel(stats, array, item.dtype, digest, item.key)
        else:
            summaries[item.key] = summary_or_full(item.row, item.finite, array, item.dtype, digest, item.key)
    unpack_others(layout, outputs, summaries, values if keep_values else None)
    return summaries, values


def unpack_others(layout: Layout, outputs: dict[str, Any], summaries: dict[str, dict[str, Any]],
                  values: dict[str, np.ndarray] | None) -> None:
    """Summaries (and, into `values` if given, the values) of the tensors that are not floating point."""
    for index, tensor in zip(layout.others, outputs["others"]):
        array = _hashable(np.array(to_numpy(tensor)))  # a copy: small, and may alias a variable
        key = layout.keys[index]
        if hash_only(key):
            summaries[key] = {"shape": list(array.shape), "dtype": layout.dtypes[index], "numel": int(array.size),
                              "hash": hash_array(array)}
        else:
            summaries[key] = summarize_array(array, dtype_name=layout.dtypes[index])
        if values is not None:
            values[layout.keys[index]] = array


@dataclass(slots=True)
class _Found:
    """One array of a step's outputs, with what its summary is made from."""

    key: str
    array: np.ndarray
    dtype: str
    # Statistics reduced by numpy (5, non-zeros included) or in the graph (4); None: by the kernel.
    row: list[float] | None
    finite: bool
    hash_only: bool = False


def summary_of_kernel(found: Summary | None, array: np.ndarray, dtype: str, digest: str,
                       key: str) -> dict[str, Any]:
    """The summary from the kernel's statistics; numpy's where it had none (no kernel, a half type) and
    where it found NaN or Inf, whose exact counts and extremes numpy gives as before."""
    zeros, nan, inf = found.counts if found is not None else (0, 0, 0)
    if found is None or array.size == 0 or nan or inf:
        summary = summarize_array(array)
    else:
        low, high, total, sum_of_squares = found.stats
        row = [total, sum_of_squares, low, high, float(array.size - zeros)]
        summary = _summary(row, tuple(array.shape), dtype, int(array.size), digest)
    if not counts_zeros(key):
        summary["zeros"] = None
    return summary


def summary_or_full(row: list[float] | None, finite: bool, array: np.ndarray, dtype: str, digest: str,
                     key: str) -> dict[str, Any]:
    """The summary from reduced statistics; empty or non-finite tensors get numpy's exact NaN/Inf counts."""
    if row is None or array.size == 0 or not finite or not all(math.isfinite(value) for value in row):
        summary = summarize_array(array)
    else:
        if len(row) == 4:  # reduced in the graph (no kernel): zeros counted here
            row = [*row, float(np.count_nonzero(array)) if counts_zeros(key) else -1.0]
        summary = _summary(row, tuple(array.shape), dtype, int(array.size), digest)
    if not counts_zeros(key):
        summary["zeros"] = None
    return summary


def _segment_stats(flat: np.ndarray, sizes: list[int]) -> tuple[list[list[float] | None], list[bool]]:
    """Per segment (sum, sum of squares, min, max, non-zeros) in one pass each; empty segments get None."""
    stats: list[list[float] | None] = [None] * len(sizes)
    finite = [False] * len(sizes)
    starts = np.cumsum([0] + sizes[:-1]) if sizes else np.zeros(0, dtype=np.int64)
    present = [i for i, size in enumerate(sizes) if size > 0]
    if not present:
        return stats, finite
    columns = segment_columns(flat, starts[present])
    ok = np.isfinite(columns).all(axis=1).tolist()
    for row, i in zip(columns.tolist(), present):
        stats[i] = row
    for flag, i in zip(ok, present):
        finite[i] = flag
    return stats, finite


def segment_columns(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(sum, sum of squares, min, max, non-zeros) as float64 rows, one per non-empty segment starting at
    `offsets` (each running to the next offset, the last to the end of `flat`)."""
    with np.errstate(all="ignore"):
        return np.stack([
            np.add.reduceat(flat, offsets, dtype=flat.dtype),
            np.add.reduceat(np.square(flat), offsets, dtype=flat.dtype),
            np.minimum.reduceat(flat, offsets),
            np.maximum.reduceat(flat, offsets),
            np.add.reduceat(flat != 0, offsets, dtype=np.int64).astype(flat.dtype),
        ], axis=1).astype(np.float64)


def _summary(row: list[float], shape: tuple[int, ...], dtype: str, numel: int, digest: str) -> dict[str, Any]:
    total, sumsq, low, high, nonzero = row
    return {
        "shape": list(shape), "dtype": dtype, "numel": numel, "hash": digest,
        "norm": math.sqrt(sumsq), "min": low, "max": high, "mean": total / numel,
        "max_abs": max(-low, high), "nan": 0, "inf": 0, "zeros": numel - int(nonzero),
    }

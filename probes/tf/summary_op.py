"""Layer outputs summarised inside a function-mode step's graph, by a TensorFlow op built on first use.

Why: returning every layer output from the step's tf.function keeps each buffer alive to the end of the
step, so TensorFlow cannot reuse it, and the probes then read them all again afterwards. On the Keras
benchmark's MobileNetV2 that is ~100 MB a step and about a quarter of the step's time (issue 22). The op
(`native/tf_summary_op.c`, TensorFlow's stable C API around `native/summary.c`) reads each output as soon
as it is made and hands back 72 bytes. Its numbers are the native kernel's for the same tensor: the same
hash (prefix and chunking included) and the same min, max, sums and NaN/Inf counts, so a trace does not
depend on whether the op was used.

The op is built with the machine's C compiler against the installed TensorFlow, once, into the kernel's
cache folder (keyed also by TensorFlow's version and location). Where it cannot be built or loaded, or
`REPRO_AUDIT_NATIVE=0` or `REPRO_AUDIT_TF_SUMMARY_OP=0`, `summary_op()` is None and the step returns the
outputs as before.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from repro_audit.probes.common import native_summary
from repro_audit.probes.tf.tensors import LARGE_NUMEL

DISABLE_ENV = "REPRO_AUDIT_TF_SUMMARY_OP"
SOURCE = native_summary.SOURCE_DIR / "tf_summary_op.c"
RESULT_BYTES = 72  # float64 min, max, sum, sum of squares; int64 zeros, NaN, Inf; 16-byte digest
_DTYPES = frozenset({"float32", "float64"})  # the kernel's float kinds
_loaded: list[Callable[[Any], Any] | None] = []


def summary_op() -> Callable[[Any], Any] | None:
    """The op (tensor -> uint8[72]), built or loaded once per process; None where it cannot be had."""
    if not _loaded:
        disabled = os.environ.get(native_summary.DISABLE_ENV, "1") == "0" or os.environ.get(DISABLE_ENV, "1") == "0"
        _loaded.append(None if disabled else _load())
    return _loaded[0]


def loaded() -> bool:
    """Whether this process has loaded the op (the environment says so; asking never builds it)."""
    return bool(_loaded) and _loaded[0] is not None


def summarised_in_graph(tensor: Any) -> bool:
    """A float32/float64 output of known shape, of at least rank 1, large enough that, returned whole, it
    would get its statistics from the kernel (not from numpy's rows): the op then gives the same numbers."""
    shape = tensor.shape
    return (tensor.dtype.name in _DTYPES and shape.rank is not None and shape.rank >= 1
            and shape.is_fully_defined() and shape.num_elements() >= LARGE_NUMEL)


def summaries_of(keys: Sequence[str], dtypes: Sequence[str], shapes: Sequence[tuple[int, ...]],
                 results: np.ndarray) -> dict[str, dict[str, Any]]:
    """Trace summaries (docs/trace-format.md) of layer outputs from the op's rows, as the kernel path makes
    them: where there is NaN or Inf, numpy's `summarize_array` numbers, which the op's counts and extremes
    give."""
    results = np.ascontiguousarray(results, dtype=np.uint8).reshape(len(keys), RESULT_BYTES)
    stats = results[:, :32].copy().view(np.float64)  # min, max, sum, sum of squares
    counts = results[:, 32:56].copy().view(np.int64)  # zeros, NaN, Inf
    numels = [math.prod(shape) for shape in shapes]
    with np.errstate(all="ignore"):
        means = stats[:, 2] / np.array(numels, dtype=np.float64)
        norms = np.sqrt(stats[:, 3])
        max_abs = np.where(counts[:, 1] > 0, np.nan, np.maximum(-stats[:, 0], stats[:, 1]))
    found: dict[str, dict[str, Any]] = {}
    for key, dtype, shape, numel, low, high, mean, norm, largest, nan, inf, digest in zip(
            keys, dtypes, shapes, numels, stats[:, 0].tolist(), stats[:, 1].tolist(), means.tolist(),
            norms.tolist(), max_abs.tolist(), counts[:, 1].tolist(), counts[:, 2].tolist(), results[:, 56:]):
        found[key] = {"shape": list(shape), "dtype": dtype, "numel": numel, "hash": "xxh3:" + digest.tobytes().hex(),
                      "norm": norm, "min": low, "max": high, "mean": mean, "max_abs": largest, "nan": nan,
                      "inf": inf, "zeros": None}  # layer outputs leave zeros null, as torch's do
    return found


def _load(cache_dir: Path | None = None, compiler: str | None = None) -> Callable[[Any], Any] | None:
    """The op from the library built for this TensorFlow (built now if the cache has none)."""
    compiler = compiler or native_summary.find_compiler()
    if compiler is None:
        return None
    import tensorflow as tf

    folder = Path(tf.sysconfig.get_lib())
    framework = folder / "libtensorflow_framework.so.2"
    if not framework.exists():
        return None
    include = tf.sysconfig.get_include()
    linked = (f"-I{include}", f"-L{folder}", f"-Wl,-rpath,{folder}", "-l:libtensorflow_framework.so.2")
    flag_sets = [tuple(flag for flag in flags if flag != "-fopenmp") + linked for flags in native_summary.FLAG_SETS]
    stat = framework.stat()
    path = native_summary.cached_library(
        compiler, "tf_summary_op.so", [SOURCE, native_summary.SOURCE_DIR / "summary.c"],
        list(dict.fromkeys(flag_sets)), key_extra=f"tensorflow {tf.__version__} {framework} {stat.st_size} "
                                                  f"{stat.st_mtime_ns}", cache_dir=cache_dir)
    if path is None:
        return None
    try:
        module = tf.load_op_library(str(path))
        return module.repro_audit_summary  # type: ignore[no-any-return]
    except (tf.errors.OpError, OSError, AttributeError):
        return None

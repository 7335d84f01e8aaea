"""Hash and statistics of an array in one pass over memory, by a small C kernel built on first use.

Why: a recorded step summarises every gradient, parameter and module output. Done with separate
reductions (hash, min/max, sum, sum of squares, zero count), each tensor is read five times and each read
is an op with its own overhead; `native/summary.c` reads it once, in blocks that stay in the L1 cache, and
is three to five times cheaper. Its hash is the same XXH3-128 as `hashing.hash_numeric` (the kernel
compiles the xxHash release that the `xxhash` package wraps).

The kernel is compiled with the machine's C compiler (`$CC`, else `cc`, `gcc` or `clang`) for this CPU,
once, into a cache folder keyed by the sources, flags, compiler and CPU. Where there is no compiler, the
build fails, or `REPRO_AUDIT_NATIVE=0`, `kernel()` is None and the probes fall back to framework
reductions: the same hashes and counts, sums and norms equal up to float rounding. A failed build is
remembered, so later runs do not pay for it again.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

SOURCE_DIR = Path(__file__).resolve().parent / "native"
SOURCES = ("summary.c", "xxhash.h")
# -ffp-contract=off: no fused multiply-add, so sums of squares are the same whichever compiler built it.
# -fopenmp: the kernel's threads are OpenMP's. torch ships the GNU OpenMP runtime under the same name
# (libgomp.so.1) and the loader maps a library name only once, so in a torch process the kernel uses
# torch's own intra-op threads. Without OpenMP it still builds, and starts threads of its own for batches.
FLAG_SETS = (("-O3", "-std=c99", "-ffp-contract=off", "-shared", "-fPIC", "-pthread", "-fopenmp", "-march=native"),
             ("-O3", "-std=c99", "-ffp-contract=off", "-shared", "-fPIC", "-pthread", "-fopenmp"),
             ("-O3", "-std=c99", "-ffp-contract=off", "-shared", "-fPIC", "-pthread"))
BUILD_TIMEOUT_S = 60
DISABLE_ENV = "REPRO_AUDIT_NATIVE"
CACHE_ENV = "REPRO_AUDIT_CACHE_DIR"

# Kinds of a batch item: float32 or float64 values with statistics, or any array's bytes, hashed only.
FLOAT32, FLOAT64, BYTES = 0, 1, 2
_INT3 = ctypes.c_int64 * 3


class Summary(NamedTuple):
    """What the kernel found: hash hex digest, [min, max, sum, sum of squares], [zeros, NaN, Inf].

    A named tuple: some 650 are made per step, and a frozen dataclass costs four times as much to build."""

    digest: str
    stats: tuple[float, float, float, float]
    counts: tuple[int, int, int]


class NativeSummary:
    """The loaded kernel. Calls release the GIL (ctypes does so for every foreign call)."""

    def __init__(self, library: ctypes.CDLL, path: Path, *, framework_openmp: bool = True) -> None:
        self.path = path
        self._f32 = self._declare(library.summary_f32)
        self._f64 = self._declare(library.summary_f64)
        self._counts = {False: library.activation_counts_f32, True: library.activation_counts_f64}
        for function in self._counts.values():
            function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_double,
                                 ctypes.c_double, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            function.restype = None
        self._many = library.summary_many
        self._many.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_int] + \
            [ctypes.c_void_p] * 3
        self._many.restype = ctypes.c_int64
        # OpenMP threads only where they are the framework's own (see FLAG_SETS): mapped before the kernel
        # loaded, and the only runtime after. In a TensorFlow process the kernel would bring libgomp itself,
        # whose idle threads spin for milliseconds after each call, taking a core from TF's next step
        # (up to 4 ms of a 45 ms Keras step): there it starts threads of its own, which end with the call.
        self.openmp = bool(library.summary_openmp()) and framework_openmp and _one_openmp_runtime()
        library.summary_use_openmp.argtypes = [ctypes.c_int]
        library.summary_use_openmp(int(self.openmp))

    @staticmethod
    def _declare(function: Any) -> Any:
        function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int,
                             ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        function.restype = ctypes.c_int
        return function

    def activation_counts(self, address: int, rows: int, cols: int, *, kind: int, low: float, high: float,
                          double: bool, threads: int = 1) -> list[int]:
        """[saturated, dead units, units] of a rows x cols float array (kinds in summary.c), with runs of
        rows on `threads` threads where it is large."""
        scratch = np.empty(cols, dtype=np.float64 if double else np.float32)
        out = _INT3()
        self._counts[double](address, rows, cols, kind, low, high, threads, scratch.ctypes.data, out)
        return [out[0], out[1], out[2]]

    def summarize_many(self, items: Sequence[tuple[int, int, int, bytes]], *, zeros: bool = True,
                       threads: int = 1) -> list[Summary]:
        """Items (address, numel or, for BYTES, byte count, kind, prefix) on `threads` threads at once.

        Summaries come back in item order; a BYTES item's statistics are zeros. The caller keeps every
        array alive and unchanged until this returns.
        """
        if not items:
            return []
        batch = PreparedBatch(self, items)
        batch.run(zeros=zeros, threads=threads)
        return batch.summaries()


class PreparedBatch:
    """The arguments of one `summary_many` call, built once and run again and again.

    A model's parameters, their gradients and the optimizer's state sit at the same addresses with the
    same sizes step after step: building the argument arrays for some 270 items costs more than a tenth
    of hashing them. What a run found stays in `stats` (min, max, sum, sum of squares), `counts` (zeros,
    NaN, Inf) and `digests()` until the next run.
    """

    def __init__(self, native: NativeSummary, items: Sequence[tuple[int, int, int, bytes]]) -> None:
        """Items as for `NativeSummary.summarize_many`; the caller keeps the arrays alive across runs."""
        self._native = native
        self.n = n = len(items)
        self._addresses = np.array([item[0] for item in items], dtype=np.int64)
        self._numels = np.array([item[1] for item in items], dtype=np.int64)
        self._kinds = np.array([item[2] for item in items], dtype=np.int32)
        self._prefixes = b"".join(item[3] for item in items)
        self._offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(item[3]) for item in items], out=self._offsets[1:])
        self.stats = np.zeros((n, 4), dtype=np.float64)
        self.counts = np.zeros((n, 3), dtype=np.int64)
        self._digests = np.zeros((n, 16), dtype=np.uint8)
        self._arguments = (n, self._addresses.ctypes.data, self._numels.ctypes.data, self._kinds.ctypes.data,
                           self._prefixes, self._offsets.ctypes.data)
        self._outputs = (self.stats.ctypes.data, self.counts.ctypes.data, self._digests.ctypes.data)

    def move(self, addresses: Sequence[int]) -> None:
        """The same arrays (sizes, kinds, prefixes) at other addresses: a gradient freed and made again."""
        self._addresses[:] = addresses

    def run(self, *, zeros: bool = True, threads: int = 1) -> None:
        """Hash and reduce every item now, on `threads` threads."""
        if self.n and self._native._many(*self._arguments, int(zeros), max(1, threads), *self._outputs):
            raise RuntimeError("the native summary kernel failed to hash")

    def digests(self) -> list[str]:
        hexes = self._digests.tobytes().hex()
        return ["xxh3:" + hexes[i:i + 32] for i in range(0, 32 * self.n, 32)]

    def summaries(self) -> list[Summary]:
        stats, numbers = self.stats.tolist(), self.counts.tolist()
        return [Summary(digest, tuple(stats[i]), tuple(numbers[i]))  # type: ignore[arg-type]
                for i, digest in enumerate(self.digests())]


class SummarySlots:
    """Summaries written by the kernel straight into preallocated arrays, read out together by `take`.

    Module outputs come one at a time and are summarised as they come (while in the CPU cache, before
    anything can change them in place). Each call here is one ctypes call of about 2 µs; building the
    result objects for every output on the spot cost several times that, 126 times a step.
    """

    def __init__(self, native: NativeSummary, capacity: int = 256, *, threads: int = 1) -> None:
        """`threads` >= 2 lets an array of more than 64 KiB be read in chunks on that many threads, each
        its own run of chunks, as the framework's threads wrote it (summary.c)."""
        self._native = native
        self.threads = threads
        self._n = 0
        self._out = np.zeros((capacity, 4), dtype=np.float64)
        self._counts = np.zeros((capacity, 3), dtype=np.int64)
        self._digests = np.zeros((capacity, 16), dtype=np.uint8)
        self._addresses = self._address_of_arrays()

    def _address_of_arrays(self) -> tuple[int, int, int]:
        # Read once per allocation: numpy's `.ctypes` builds a new object on every access.
        return self._out.ctypes.data, self._counts.ctypes.data, self._digests.ctypes.data

    def add(self, address: int, numel: int, *, double: bool, prefix: bytes, zeros: bool) -> int:
        """Summarise `numel` contiguous float32 (float64) values at `address` now (the caller keeps them
        alive); returns the slot `take` lists it in. Without `zeros` the zero count is 0 and the pass about
        a fifth cheaper."""
        slot = self._n
        if slot == len(self._out):
            self._out, self._counts, self._digests = (np.concatenate([array, np.zeros_like(array)])
                                                      for array in (self._out, self._counts, self._digests))
            self._addresses = self._address_of_arrays()
        out, counts, digests = self._addresses
        function = self._native._f64 if double else self._native._f32
        if function(address, numel, prefix, len(prefix), int(zeros), self.threads, out + 32 * slot,
                    counts + 24 * slot, digests + 16 * slot) != 0:
            raise RuntimeError("the native summary kernel failed to hash")
        self._n = slot + 1
        return slot

    def take(self) -> list[Summary]:
        """Every summary added since the last `take`, by slot; the slots are free again afterwards."""
        stats, counts, digests = self.take_arrays()
        rows, numbers = stats.tolist(), counts.tolist()
        return [Summary(digest, tuple(rows[i]), tuple(numbers[i]))  # type: ignore[arg-type]
                for i, digest in enumerate(digests)]

    def take_arrays(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """As `take`, as arrays: [min, max, sum, sum of squares] and [zeros, NaN, Inf] rows (views, valid
        until the next `add`) and the digests."""
        n, self._n = self._n, 0
        hexes = self._digests[:n].tobytes().hex()
        return self._out[:n], self._counts[:n], ["xxh3:" + hexes[i:i + 32] for i in range(0, 32 * n, 32)]


_loaded: list[NativeSummary | None] = []


def kernel() -> NativeSummary | None:
    """The kernel, built or loaded once per process; None where it cannot be had (see module docstring)."""
    if not _loaded:
        _loaded.append(None if os.environ.get(DISABLE_ENV, "1") == "0" else load())
    return _loaded[0]


def load(cache_dir: Path | None = None, compiler: str | None = None) -> NativeSummary | None:
    """Load the cached build for this machine, building it first if there is none."""
    compiler = compiler or find_compiler()
    if compiler is None:
        return None
    library_path = cached_library(compiler, "summary.so", [SOURCE_DIR / "summary.c"], FLAG_SETS,
                                  key_extra="", cache_dir=cache_dir)
    if library_path is None:
        return None
    framework_openmp = _one_openmp_runtime()  # before the kernel maps one of its own
    try:
        return NativeSummary(ctypes.CDLL(str(library_path)), library_path, framework_openmp=framework_openmp)
    except (OSError, AttributeError):
        return None


def cached_library(compiler: str, name: str, sources: Sequence[Path], flag_sets: Sequence[Sequence[str]], *,
                   key_extra: str, cache_dir: Path | None = None) -> Path | None:
    """The library `name` built from `sources` (with summary.c's headers) for this machine: from the cache,
    or built now with the first of `flag_sets` that compiles. None where it cannot be had: a build that
    failed before (remembered in the cache), or a cache folder that is not this user's alone."""
    root = cache_dir or _cache_root()
    folder = root / _build_key(compiler, sources, flag_sets, key_extra)
    library_path = folder / name
    failed = folder / "failed.txt"
    if not library_path.exists():
        if failed.exists():
            return None
        if not _build(compiler, folder, library_path, failed, sources, flag_sets):
            return None
    if not all(_private(path) for path in (root, folder, library_path)):
        return None  # a library someone else could have put there is never loaded
    return library_path


def _build(compiler: str, folder: Path, library_path: Path, failed: Path, sources: Sequence[Path],
           flag_sets: Sequence[Sequence[str]]) -> bool:
    """Compile into a temporary file, then rename: two runs building at once each get a whole library."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    errors = []
    for flags in flag_sets:
        try:
            descriptor, temporary = tempfile.mkstemp(dir=folder, suffix=".so.partial")
        except OSError:
            return False  # a cache folder we cannot write to: the framework reductions do the work
        os.close(descriptor)
        # Sources before the flags' libraries (-l...): the linker resolves a library only for what came before.
        sources_first = [str(path) for path in sources]
        libraries = [flag for flag in flags if flag.startswith("-l")]
        command = [compiler, *[flag for flag in flags if not flag.startswith("-l")], "-o", temporary,
                   *sources_first, *libraries]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            errors.append(f"{' '.join(command)}: {error}")
            Path(temporary).unlink(missing_ok=True)
            continue
        if done.returncode == 0:
            os.chmod(temporary, 0o755)
            os.replace(temporary, library_path)
            return True
        errors.append(f"{' '.join(command)}: exit {done.returncode}\n{done.stderr[-2000:]}")
        Path(temporary).unlink(missing_ok=True)
    try:
        failed.write_text("\n\n".join(errors))
    except OSError:
        pass
    return False


def _one_openmp_runtime() -> bool:
    """Exactly one OpenMP runtime mapped in this process (Linux): the kernel's libgomp is the framework's.

    Checked when the kernel loads, which the torch probes do after importing torch. A torch built with
    another runtime (LLVM's libomp, Intel's libiomp5) shows up as a second one: the kernel then keeps to
    threads of its own.
    """
    try:
        with open("/proc/self/maps") as handle:
            runtimes = {line.split()[-1] for line in handle
                        if any(name in line for name in ("libgomp", "libomp", "libiomp"))}
    except OSError:
        return False
    return len(runtimes) == 1


def find_compiler() -> str | None:
    """The machine's C compiler: `$CC`, else `cc`, `gcc` or `clang` on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _build_key(compiler: str, sources: Sequence[Path], flag_sets: Sequence[Sequence[str]], extra: str) -> str:
    """Sources, flags, compiler (path, size, date), CPU and `extra` (what else the library is built
    against): a build made for another machine or installation never loads."""
    digest = hashlib.sha256()
    for path in dict.fromkeys((*sources, *(SOURCE_DIR / name for name in SOURCES))):
        digest.update(path.read_bytes())
    compiler_stat = os.stat(compiler)
    digest.update(repr((tuple(map(tuple, flag_sets)), compiler, compiler_stat.st_size, compiler_stat.st_mtime_ns,
                        platform.machine(), sys.platform, _cpu_identity(), extra)).encode())
    return digest.hexdigest()[:24]


def _cpu_identity() -> str:
    """Model and instruction-set flags of the CPU, where the OS says them (-march=native depends on them)."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured and configured.strip().lower() != "off":  # "off" is for the file-digest cache (stat_cache.py)
        return Path(configured) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "repro-audit" / "native"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    user = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = Path(tempfile.gettempdir()) / f"repro-audit-{user}" / "native"
    try:
        fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        pass
    return fallback


def _private(path: Path) -> bool:
    """Owned by this user and not writable by others (POSIX; elsewhere the folder's own rights apply).

    The shared temporary folder is a fallback cache: another user could create our folder there first.
    """
    if not hasattr(os, "getuid"):
        return True
    try:
        status = path.stat()
    except OSError:
        return False
    return status.st_uid == os.getuid() and not status.st_mode & 0o002

"""The native one-pass kernel: same hashes and statistics as the torch reductions, and a safe fallback."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repro_audit.audit.config import load_config
from repro_audit.audit.runner import record
from repro_audit.audit.trace import Trace
from repro_audit.probes.common import native_summary
from repro_audit.probes.common.hashing import CHUNK_BYTES, hash_numeric
from repro_audit.probes.torch.tensors import SummaryBatch, summarize, tensor_hash, tensor_hashes
from tests.helpers import broken_compiler

needs_compiler = pytest.mark.skipif(native_summary.find_compiler() is None, reason="no C compiler here")


@pytest.fixture
def kernel_off() -> object:
    """Summaries in this process by torch reductions, as where no kernel could be built."""
    saved = list(native_summary._loaded)
    native_summary._loaded[:] = [None]
    yield
    native_summary._loaded[:] = saved


def tensors_with_edges() -> list[torch.Tensor]:
    """Sizes around the kernel's block and lane widths; NaN, Inf and -0.0 in blocks past the first."""
    generator = torch.Generator().manual_seed(3)
    tensors = [torch.randn(n, generator=generator) for n in (1, 15, 16, 17, 4095, 4096, 4097, 20000)]
    tensors += [torch.randn(3, 4097, generator=generator).double(), torch.tensor(2.5), torch.zeros(40)]
    poisoned = torch.randn(12000, generator=generator)
    poisoned[5000], poisoned[9001], poisoned[11999], poisoned[7] = float("nan"), float("inf"), float("-inf"), -0.0
    only_inf = torch.randn(9000, generator=generator).double()
    only_inf[8500] = float("-inf")
    nan_first = torch.randn(100, generator=generator)
    nan_first[0] = float("nan")
    return tensors + [poisoned, only_inf, nan_first]


def summarize_one(kernel: native_summary.NativeSummary, address: int, numel: int, *, double: bool,
                  prefix: bytes) -> native_summary.Summary:
    """One array through the kernel's single call, as module outputs go (`SummarySlots`)."""
    slots = native_summary.SummarySlots(kernel)
    assert slots.add(address, numel, double=double, prefix=prefix, zeros=True) == 0
    return slots.take()[0]


@needs_compiler
def test_kernel_builds_and_hashes_like_xxhash() -> None:
    kernel = native_summary.kernel()
    assert kernel is not None and kernel.path.exists()
    for tensor in tensors_with_edges():
        array = tensor.numpy()
        found = summarize_one(kernel, tensor.data_ptr(), tensor.numel(), double=tensor.dtype == torch.float64,
                              prefix=f"{array.dtype.str}{array.shape or (1,)}".encode())
        assert found.digest == hash_numeric(array)


@needs_compiler
def test_statistics_equal_the_torch_reductions(kernel_off: object) -> None:
    tensors = tensors_with_edges()
    by_torch = summarize(tensors)
    by_torch_no_zeros = summarize(tensors, count_zeros=False)
    native_summary._loaded.clear()  # the kernel back on for this part
    assert native_summary.kernel() is not None
    by_kernel = summarize(tensors)
    one_at_a_time = SummaryBatch(count_zeros=False)  # as module outputs come: one kernel call per add
    positions = [one_at_a_time.add(t) for t in tensors]
    one_by_one = one_at_a_time.finish()
    assert positions == list(range(len(tensors)))
    for tensor, kernel, reference in zip(tensors, by_kernel, by_torch, strict=True):
        for key in ("hash", "shape", "dtype", "numel", "min", "max", "max_abs", "nan", "inf", "zeros"):
            both_nan = isinstance(kernel[key], float) and math.isnan(kernel[key]) and math.isnan(reference[key])
            assert kernel[key] == reference[key] or both_nan, (tuple(tensor.shape), key)
        for key in ("norm", "mean"):
            if math.isfinite(reference[key]):
                assert kernel[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
            else:
                assert not math.isfinite(kernel[key]), key
    assert by_kernel[-3]["nan"] == 1 and by_kernel[-3]["inf"] == 2 and by_kernel[-2]["inf"] == 1
    for alone, together in zip(one_by_one, by_torch_no_zeros, strict=True):
        assert {k: v for k, v in alone.items() if k not in ("norm", "mean", "min", "max", "max_abs")} == \
            {k: v for k, v in together.items() if k not in ("norm", "mean", "min", "max", "max_abs")}
    assert all(s["zeros"] is None for s in one_by_one)


@needs_compiler
def test_batch_on_two_threads_equals_one_call_at_a_time() -> None:
    kernel = native_summary.kernel()
    assert kernel is not None
    tensors = tensors_with_edges()
    items = [(t.data_ptr(), t.numel(), native_summary.FLOAT64 if t.dtype == torch.float64 else native_summary.FLOAT32,
              f"{t.numpy().dtype.str}{t.numpy().shape or (1,)}".encode()) for t in tensors]
    batch = kernel.summarize_many(items, threads=2)
    single = [summarize_one(kernel, address, numel, double=kind == native_summary.FLOAT64, prefix=prefix)
              for address, numel, kind, prefix in items]
    assert [b.digest for b in batch] == [s.digest for s in single]
    assert [b.counts for b in batch] == [s.counts for s in single]
    assert all(b.stats == s.stats or any(map(math.isnan, b.stats)) for b, s in zip(batch, single))
    # Any dtype is hashed as its bytes, as `tensor_hash` does.
    mixed = [torch.arange(10), torch.tensor([True, False, True]), torch.randn(5, 5).half(), torch.randn(4, 4).t(),
             torch.tensor(7)]
    assert tensor_hashes(mixed) == [tensor_hash(t) for t in mixed]


def chunk_edges() -> list[torch.Tensor]:
    """Arrays around CHUNK_BYTES (past it, read as chunks); NaN, Inf and zeros in chunks past the first."""
    generator = torch.Generator().manual_seed(5)
    per_chunk = CHUNK_BYTES // 4
    tensors = [torch.randn(n, generator=generator) for n in (per_chunk - 1, per_chunk, per_chunk + 1,
                                                             3 * per_chunk + 5, 16 * per_chunk)]
    tensors += [torch.randn(CHUNK_BYTES // 8 + 1, generator=generator).double(),
                torch.randn(300, 97, generator=generator).double(), torch.relu(torch.randn(128, 512, generator=generator))]
    poisoned = torch.randn(40_000, generator=generator)
    poisoned[400], poisoned[20_000], poisoned[39_999], poisoned[7:300] = float("nan"), float("inf"), float("-inf"), 0.0
    return tensors + [poisoned]


@needs_compiler
def test_large_arrays_give_the_same_results_on_any_number_of_threads() -> None:
    """Past CHUNK_BYTES each thread reads its own run of chunks (a module output is read half by each core,
    as torch wrote it): hash and statistics are bit for bit those of one thread, and the hash is the one
    `hashing` computes."""
    # Loaded again here: a TF test module run first in this process may have loaded the kernel before torch
    # (and its OpenMP runtime) was imported.
    kernel = native_summary.load()
    assert kernel is not None
    if sys.platform.startswith("linux") and (Path(torch.__file__).parent / "lib" / "libgomp.so.1").exists():
        assert kernel.openmp  # torch's OpenMP runtime is the only one in the process, and the kernel's
    tensors = chunk_edges()
    prefixes = [f"{t.numpy().dtype.str}{t.numpy().shape}".encode() for t in tensors]
    found = {}
    for threads in (1, 2, 3, 4):
        slots = native_summary.SummarySlots(kernel, threads=threads)
        for t, prefix in zip(tensors, prefixes):
            slots.add(t.data_ptr(), t.numel(), double=t.dtype == torch.float64, prefix=prefix, zeros=True)
        found[threads] = [(s.digest, [repr(v) for v in s.stats], s.counts) for s in slots.take()]
        items = [(t.data_ptr(), t.numel(), native_summary.FLOAT64 if t.dtype == torch.float64
                  else native_summary.FLOAT32, prefix) for t, prefix in zip(tensors, prefixes)]
        batch = kernel.summarize_many(items, threads=threads)
        assert [(s.digest, [repr(v) for v in s.stats], s.counts) for s in batch] == found[threads]
    assert found[1] == found[2] == found[3] == found[4]
    assert [digest for digest, _, _ in found[1]] == [hash_numeric(t.numpy()) for t in tensors]
    assert found[1][-1][2] == (293, 1, 2) and found[1][-2][2][0] > 0  # zeros, NaN, Inf counted across chunks
    for t, (_, stats, _) in zip(tensors[:-1], found[1][:-1]):
        values = t.double()
        assert float(stats[0]) == values.min().item() and float(stats[1]) == values.max().item()
        # float32 lanes are folded into double totals per block: sums hold to float32 rounding
        assert abs(float(stats[2]) - values.sum().item()) <= 1e-6 * values.abs().sum().item()
        assert math.isclose(float(stats[3]), values.pow(2).sum().item(), rel_tol=1e-6)
    # Arrays hashed as bytes (any dtype) follow the same chunks, in a batch of many.
    raw = [torch.arange(CHUNK_BYTES // 8 * 3 + 1), torch.arange(CHUNK_BYTES // 8), torch.randn(200, 300).half()]
    assert tensor_hashes(raw) == [tensor_hash(t) for t in raw] == [hash_numeric(t.numpy()) for t in raw]


@needs_compiler
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("framework", ["none", "tensorflow"])
def test_kernel_uses_threads_of_its_own_where_it_would_bring_the_openmp_runtime(framework: str) -> None:
    """Where no framework mapped an OpenMP runtime before the kernel loaded (TensorFlow's CPU build maps
    none), the kernel's own libgomp would leave threads spinning after each call, taking a core from the
    next step: it starts its own threads, and still hashes large arrays on several of them."""
    import subprocess

    if framework == "tensorflow":
        pytest.importorskip("tensorflow")
    script = (
        ("import tensorflow as tf\ntf.constant(1.0) + 1.0\n" if framework == "tensorflow" else "") +
        "import numpy as np\n"
        "from repro_audit.probes.common import native_summary as n\n"
        "from repro_audit.probes.common.hashing import hash_numeric\n"
        "before = n._one_openmp_runtime()\n"
        "k = n.kernel()\n"
        "a = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)\n"
        "item = (a.ctypes.data, a.size, n.FLOAT32, f'{a.dtype.str}{a.shape}'.encode())\n"
        "[s] = k.summarize_many([item], threads=2)\n"
        "print(before, k.openmp, s.digest == hash_numeric(a))\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    before, uses_openmp, same_digest = found.stdout.split()[-3:]
    # OpenMP threads exactly where a framework brought the runtime (torch does: the test above).
    assert uses_openmp == before and same_digest == "True", found.stdout + found.stderr
    if framework == "none":
        assert before == "False"


def test_failed_build_falls_back_and_is_not_retried(tmp_path: Path) -> None:
    compiler, log = broken_compiler(tmp_path, "error: no such thing")
    assert native_summary.load(tmp_path / "cache", str(compiler)) is None
    assert len(log.read_text().splitlines()) == len(native_summary.FLAG_SETS)  # every flag set was tried
    failure = next((tmp_path / "cache").glob("*/failed.txt")).read_text()
    assert "no such thing" in failure
    assert native_summary.load(tmp_path / "cache", str(compiler)) is None
    assert len(log.read_text().splitlines()) == len(native_summary.FLAG_SETS)  # remembered, not run again


def test_switched_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = list(native_summary._loaded)
    monkeypatch.setenv(native_summary.DISABLE_ENV, "0")
    native_summary._loaded.clear()
    try:
        assert native_summary.kernel() is None
        summary = summarize([torch.ones(5)])[0]  # the torch reductions answer instead
        assert summary["norm"] == pytest.approx(math.sqrt(5)) and summary["zeros"] == 0
    finally:
        native_summary._loaded[:] = saved


@needs_compiler
def test_recordings_with_and_without_kernel_have_the_same_hashes(write_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    traces = {}
    for name, setting in (("kernel", "1"), ("torch", "0")):
        monkeypatch.setenv(native_summary.DISABLE_ENV, setting)
        result = record(load_config(write_config(name, recipe="tiny_mlp:build", steps=3)), tmp_path / name)
        assert result.ok, result.failure_line()
        traces[name] = Trace(tmp_path / name)
    kernel, reference = traces["kernel"], traces["torch"]
    assert kernel.environment["summary_kernel"] == "native" and reference.environment["summary_kernel"] == "torch"
    for step_k, step_t in zip(kernel.steps, reference.steps, strict=True):
        for category in ("gradients", "parameters"):
            assert {k: v["hash"] for k, v in step_k[category].items()} == \
                   {k: v["hash"] for k, v in step_t[category].items()}
            for name, summary in step_k[category].items():
                assert summary["norm"] == pytest.approx(step_t[category][name]["norm"], rel=1e-5)
                assert summary["zeros"] == step_t[category][name]["zeros"]
        assert [o["summary"]["hash"] for o in step_k["module_outputs"]] == \
               [o["summary"]["hash"] for o in step_t["module_outputs"]]
        assert step_k["optimizer"]["state"] == step_t["optimizer"]["state"]
    assert np.all([a["summary"]["hash"] == b["summary"]["hash"]
                   for a, b in zip(kernel.initialisation["tensors"], reference.initialisation["tensors"])])


@needs_compiler
@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "relu"])
def test_activation_counts_equal_the_torch_ops(kind: str, kernel_off: object) -> None:
    from repro_audit.probes.common.health_numbers import SIGMOID_SATURATION, TANH_SATURATION
    from repro_audit.probes.torch.health import activation_counts

    generator = torch.Generator().manual_seed(5)
    relu = torch.relu(torch.randn(64, 33, generator=generator) - 1.5)  # some units never positive
    relu[:, 4] = 0.0
    relu[:, 7] = 0.0
    relu[3, 7] = float("nan")  # NaN keeps an otherwise dead unit alive, as amax propagates it
    saturating = torch.randn(6, 50, 40, generator=generator, dtype=torch.float64) * 3
    saturating[0, 0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), TANH_SATURATION])
    on_threshold = torch.tensor([[SIGMOID_SATURATION, 1 - SIGMOID_SATURATION, 0.5, -0.0]])
    # Past CHUNK_BYTES each thread counts its own rows: a unit positive only in the last rows, or only NaN
    # there, is alive; one never positive in any thread's rows is dead.
    wide = torch.relu(torch.randn(257, 96, generator=generator) - 2.0)
    wide[:, :10] = 0.0
    wide[-1, 3], wide[-2, 5], wide[0, 6] = 1.0, float("nan"), 2.0
    tensors = {"relu": [relu, relu.double(), torch.zeros(2, 8), wide, wide.double()],
               "tanh": [saturating, torch.tanh(saturating.float())],
               "sigmoid": [torch.sigmoid(saturating * 4), on_threshold]}[kind]
    by_torch = [[int(v) for v in activation_counts(t, kind).tolist()] for t in tensors]  # type: ignore[union-attr]
    native_summary._loaded.clear()
    by_kernel = [activation_counts(t, kind) for t in tensors]
    assert all(isinstance(counts, list) for counts in by_kernel)  # the kernel counted them
    assert by_kernel == by_torch
    assert any(counts[0] or counts[1] for counts in by_kernel)  # the cases hold something to count
    kernel = native_summary.kernel()
    assert kernel is not None
    for t in tensors:  # one thread or several: the same counts
        rows, cols = t.numel() // t.shape[-1], t.shape[-1]
        counted = {threads: kernel.activation_counts(t.data_ptr(), rows, cols, kind=2 if kind == "relu" else 0,
                                                     low=0.0, high=0.0 if kind == "relu" else TANH_SATURATION,
                                                     double=t.dtype == torch.float64, threads=threads)
                   for threads in (1, 2, 3)}
        assert counted[1] == counted[2] == counted[3]


@needs_compiler
def test_library_others_could_write_is_not_loaded(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = native_summary.load(cache)
    assert built is not None and built.path.parent.parent == cache
    built.path.chmod(0o757)  # writable by anyone: somebody may have swapped it
    assert native_summary.load(cache) is None
    built.path.chmod(0o755)
    assert native_summary.load(cache) is not None


@needs_compiler
def test_unwritable_cache_falls_back_to_torch(write_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cache = Path("/proc/self")  # even root cannot create folders there
    else:
        cache = tmp_path / "locked"
        cache.mkdir(mode=0o500)
    assert native_summary.load(cache) is None
    monkeypatch.setenv(native_summary.CACHE_ENV, str(cache))
    result = record(load_config(write_config("run", recipe="tiny_mlp:build", steps=2)), tmp_path / "run")
    assert result.ok, result.failure_line()
    trace = Trace(tmp_path / "run")
    assert trace.environment["summary_kernel"] == "torch" and len(trace.steps) == 2


@needs_compiler
def test_a_batch_past_its_first_slots_keeps_every_summary_in_place() -> None:
    """More outputs than the preallocated slots, mixed with tensors the kernel does not take, twice over."""
    generator = torch.Generator().manual_seed(3)
    batch = SummaryBatch(count_zeros=False)
    for _ in range(2):  # `finish` frees the slots for the next step
        tensors = [torch.randn(17 + i % 5, generator=generator) if i % 7 else torch.arange(i + 1) for i in range(300)]
        tensors += [torch.randn(40, 3, generator=generator).t()]  # not contiguous: the torch path
        positions = [batch.add(t) for t in tensors]
        found = batch.finish()
        assert positions == list(range(len(tensors)))
        assert [s["hash"] for s in found] == [s["hash"] for s in summarize(tensors, count_zeros=False)]
        assert [s["shape"] for s in found] == [list(t.shape) for t in tensors]

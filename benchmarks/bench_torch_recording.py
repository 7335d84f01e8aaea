"""Recording overhead on the fixture Transformer, as ratios against a plain step in the same process.

    python benchmarks/bench_torch_recording.py [--rounds 12] [--small | --wide] [--threads N] [--no-memory]

Plain step, default recording (hashes and statistics of every gradient, parameter and module output,
random ledger, graph digest, NaN provenance armed: an outbreak step would be replayed, no graph is kept),
recording without NaN provenance, and torch's anomaly mode for comparison. Each variant trains its own copy
of the model (same seed, same batches), so a recorder's hooks stay attached as in a real run and the plain
step has none. A step runs slower right after another model's step, so each variant runs two steps in a
row and only the second is timed; the order rotates every round, and the median ratio is reported.
`cpu_ratios` divide process CPU time instead of wall time: steadier on a busy machine, though they hide
idle cores.

Peak memory is measured during the steps only, in fresh processes per variant (the median of five): after
warm-up steps the resident peak (VmHWM) is reset through /proc/self/clear_refs and a few steps run. Those
processes run with glibc's mmap threshold fixed at 64 KiB, so every tensor larger than that gets pages of
its own and hands them back when freed: the resident size then follows the tensors alive, and the peak
varies by about 0.2 MiB between processes instead of the several MiB of heap fragmentation.
Recording's extra peak (its step peak above the plain step's) is compared with the largest tensor of a
step (parameter, gradient or module output). That extra splits into the recorder's state between steps
(`state_mib`: the last step's records, the kernel's prepared batches, the code it loaded) and what a step
adds above it (`step_extra_mib`, where a copy of a tensor would show). `--wide` runs a model with four
times the largest tensors, to see which part grows with them. Linux only; elsewhere memory is left out.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "fixtures" / "configs" / "torch" / "nmt_recipe.py"
LARGE = {"vocab": 1000, "d_model": 256, "heads": 4, "enc_layers": 3, "dec_layers": 3, "d_ff": 1024,
         "batch_size": 16, "max_len": 32, "num_batches": 400}
SMALL = {"num_batches": 400}
# Four times the largest tensors of LARGE: the recorder's extra memory should not grow with them.
WIDE = {**LARGE, "vocab": 4000, "d_model": 512, "d_ff": 2048}


def load_recipe(params: dict[str, Any]) -> Any:
    sys.path.insert(0, str(RECIPE.parent))
    module = importlib.import_module("nmt_recipe")
    torch.manual_seed(0)
    return module.build(dict(params))


VARIANTS = ("plain", "recorded", "recorded_no_provenance", "detect_anomaly")


def make_step(params: dict[str, Any], capture: dict[str, Any], variant: str) -> Callable[[int], None]:
    """One variant's training step on its own copy of the model (same seed, same batches).

    Each variant owns its model, so a recorder's hooks stay attached for the whole run, as in a real
    recording, and the plain step runs with no hook at all.
    """
    from repro_audit.audit.recipe import loss_takes_step
    from repro_audit.probes.torch.random_ledger import RandomLedger
    from repro_audit.probes.torch.step_recorder import TorchStepRecorder

    recipe = load_recipe(params)
    model, optimizer = recipe.model, recipe.optimizer
    batches = iter(recipe.batches)
    with_step = loss_takes_step(recipe.loss)

    def loss(batch: Any, step: int) -> Any:
        return recipe.loss(model, batch, step=step) if with_step else recipe.loss(model, batch)

    def plain(step: int) -> None:
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        terms = loss(batch, step)
        total = sum(value * 1.0 for value in terms.values())
        total.backward()
        optimizer.step()

    if variant == "plain":
        return plain
    if variant == "detect_anomaly":
        def anomaly(step: int) -> None:
            with torch.autograd.set_detect_anomaly(True):
                plain(step)
        return anomaly
    options = {"nan_provenance": False} if variant == "recorded_no_provenance" else {}
    recorder = TorchStepRecorder(model, optimizer, capture={**capture, **options}, weight_of=lambda _: 1.0,
                                 ledger=RandomLedger(module_of=lambda: None))
    sink = open(tempfile.mktemp(suffix=".jsonl"), "w")

    def recorded(step: int) -> None:
        from repro_audit.audit.trace.step_lines import dumps_step

        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        recorder.begin_step(step, batch, replay=lambda: loss(batch, step))  # as the runner's loop does
        total = recorder.combine_loss(loss(batch, step))
        recorder.backward(total)
        recorder.after_backward()
        optimizer.step()
        recorder.finish_graph()
        sink.write(dumps_step(recorder.end_step()) + "\n")
        sink.flush()  # as TraceWriter.append_step does

    return recorded


def measure(params: dict[str, Any], rounds: int) -> dict[str, Any]:
    from repro_audit.audit.config import CAPTURE_DEFAULTS

    steps = {variant: make_step(params, dict(CAPTURE_DEFAULTS), variant) for variant in VARIANTS}
    n_params = sum(p.numel() for p in load_recipe(params).model.parameters())
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    step_number = 2  # steady state: step 1 also captures the op graph, once per run
    for name, fn in steps.items():  # warm-up
        fn(step_number)
        step_number += 1
    names = list(steps)
    for round_index in range(rounds):
        # A step runs slower right after another variant's (it inherits that model's cache and allocator
        # state), which a real run never does: each variant runs two steps in a row and only the second is
        # timed, and the order rotates every round so no variant always follows the same one.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = steps[name]
            fn(step_number)  # settles in after the other variant's step; not timed
            step_number += 1
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(step_number)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            step_number += 1
    plain, plain_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    # How far one round's ratio wanders: on a shared machine a single run's median moves by a few hundredths.
    spread = {name: _quartiles([t / p for t, p in zip(times, wall["plain"])])
              for name, times in wall.items() if name != "plain"}
    return {"parameters": n_params, "threads": torch.get_num_threads(), "plain_step_s": round(plain, 4),
            "ratios": {name: round(statistics.median(t) / plain, 3) for name, t in wall.items()},
            "ratio_quartiles_per_round": spread,
            "cpu_ratios": {name: round(statistics.median(t) / plain_cpu, 3) for name, t in cpu.items()}}


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [round(v, 3) for v in values * 2]
    low, _, high = statistics.quantiles(values, n=4)
    return [round(low, 3), round(high, 3)]


def largest_tensor_bytes(params: dict[str, Any]) -> dict[str, int]:
    """Bytes of the largest parameter (= gradient) and of the largest module output of one step."""
    from repro_audit.probes.torch.modules import ModuleTracker

    recipe = load_recipe(params)
    tracker = ModuleTracker(recipe.model, keep_outputs=True)
    tracker.start_step()
    with torch.no_grad():
        recipe.loss(recipe.model, next(iter(recipe.batches)))
    tracker.stop()
    tracker.remove()
    outputs = [t for call in tracker.calls for t in call.outputs]
    return {"parameter": max(p.numel() * p.element_size() for p in recipe.model.parameters()),
            "module_output": max((t.numel() * t.element_size() for t in outputs), default=0)}


def step_peak(params: dict[str, Any], mode: str, steps: int) -> dict[str, int]:
    """In this process: resident size before `steps` steps of `mode` and the peak while they ran."""
    from repro_audit.audit.config import CAPTURE_DEFAULTS

    fn = make_step(params, dict(CAPTURE_DEFAULTS), mode)
    for step in range(2, 4):  # warm-up: optimizer state exists, the allocator has its pools
        fn(step)
    gc.collect()
    _malloc_trim()  # hand freed heap back, so the resident size is what is live and the peak is this step's
    resting = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current resident size
    for step in range(4, 4 + steps):
        fn(step)
    return {"resting": resting, "peak": _status_bytes("VmHWM")}


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc
    except (OSError, AttributeError):
        pass


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_memory(params: dict[str, Any], mode: str, steps: int = 4) -> dict[str, int]:
    code = (f"import sys, json; sys.argv=['x']; sys.path.insert(0, {str(ROOT)!r});"
            f"import benchmarks.bench_torch_recording as b;"
            f"print(json.dumps(b.step_peak(json.loads({json.dumps(json.dumps(params))}), {mode!r}, {steps})))")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


REPEATS = 5
MMAP_THRESHOLD = 64 * 1024  # a fixed threshold: glibc's default one rises as tensors are freed (see above)


def memory_report(params: dict[str, Any]) -> dict[str, Any]:
    """Peaks of each variant's steps; recording's extra is its peak above the plain step's peak.

    Peaks are compared, not peaks above the resting size: between steps a recorder still holds the last
    step's module outputs (and, through their autograd nodes, a retained graph) until the next step
    begins, so its resting size is larger while its steps start from the same live set.
    """
    largest = largest_tensor_bytes(params)
    biggest = max(largest.values())
    # With glibc's own (sliding) mmap threshold a process's step peak wandered by 3-9 MiB from one process to
    # the next, more than one tensor here; with the fixed one it is within 0.2 MiB. The median of REPEATS
    # fresh processes is kept all the same.
    modes = ("plain", "recorded", "recorded_no_provenance")
    runs = {mode: [peak_memory(params, mode) for _ in range(REPEATS)] for mode in modes}
    peaks = {mode: {key: int(statistics.median(run[key] for run in runs[mode])) for key in ("peak", "resting")}
             for mode in modes}
    mib = 2 ** 20
    return {
        "largest_tensor_mib": {kind: round(size / mib, 2) for kind, size in largest.items()},
        "step_peak_mib": {mode: round(peak["peak"] / mib, 1) for mode, peak in peaks.items()},
        "resting_mib": {mode: round(peak["resting"] / mib, 1) for mode, peak in peaks.items()},
        "extra_peak_mib": {mode: round((peaks[mode]["peak"] - peaks["plain"]["peak"]) / mib, 1)
                           for mode in ("recorded", "recorded_no_provenance")},
        "extra_peak_in_largest_tensors": {mode: round((peaks[mode]["peak"] - peaks["plain"]["peak"]) / biggest, 2)
                                          for mode in ("recorded", "recorded_no_provenance")},
        "state_mib": {mode: round((peaks[mode]["resting"] - peaks["plain"]["resting"]) / mib, 1)
                      for mode in ("recorded", "recorded_no_provenance")},
        "step_extra_mib": {
            mode: round((_above_resting(peaks[mode]) - _above_resting(peaks["plain"])) / mib, 1)
            for mode in ("recorded", "recorded_no_provenance")},
    }


def _above_resting(peak: dict[str, int]) -> int:
    return peak["peak"] - peak["resting"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--small", action="store_true", help="the test-sized fixture instead of ~6M parameters")
    sizes.add_argument("--wide", action="store_true", help="~25M parameters: four times the largest tensors")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = SMALL if args.small else WIDE if args.wide else LARGE
    result = measure(params, args.rounds)
    if not args.no_memory and os.path.exists("/proc/self/clear_refs"):
        result["memory"] = memory_report(params)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

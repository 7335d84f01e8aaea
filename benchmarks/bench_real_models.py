"""Recording cost on real architectures, as ratios against each model's plain step in the same process.

    python benchmarks/bench_real_models.py [--models resnet,vit,lstm,gpt2,bert,keras] [--rounds 8] [--no-memory]
                                           [--no-end-to-end]

For each model of benchmarks/real_architectures.py: the steady-state step (default recording, torch's
anomaly mode and PyTorch's prototype DebugMode with tensor hashes beside it, each variant training its own
copy of the model, the order rotating every round, after three untimed rounds that pay each variant's
first-use costs (DebugMode's and the dispatch modes' imports, allocator growth); median over rounds), the
first step (fresh models,
after one warm-up step of another copy so torch's own first-use costs are paid; median of three), and the
peak memory a recorded step adds over a plain one (fresh processes; VmHWM reset before the timed steps),
against the largest tensor of a step. End to end: `repro-audit diff` of the fixture's two configs against
running the same two recipes plainly, each in its own process, steps alike. Prints a table and JSON; no
timed assertion anywhere.

`keras`: keras.applications.MobileNetV2 (weights=None, 64x64) recorded by the runner in function mode
against its plain `fit` step (benchmarks/bench_keras_fit.py `--row`), in its own process so TensorFlow's
and torch's thread pools do not share one; TF has no anomaly mode or DebugMode to set beside it. The
machine's load average is printed with the table: on a shared machine, read the ratios with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.process_memory import can_measure, reset_peak, status_bytes

VARIANTS = ("plain", "recorded", "detect_anomaly", "debug_mode_hash")
WARMUP_ROUNDS = 3
KERAS = "keras"  # the TensorFlow row, measured by bench_keras_fit.py in a process of its own
FIXTURES = ROOT / "fixtures" / "configs" / "torch"


def build(name: str) -> Any:
    from benchmarks.real_architectures import ARCHITECTURES

    torch.manual_seed(0)
    return ARCHITECTURES[name]({})


def step_function(name: str, variant: str) -> Callable[[int], None]:
    """One variant's training step on its own copy of the model: a recorder's hooks stay attached as in a
    real run, and the plain step has none."""
    from repro_audit.audit.recipe import loss_takes_step
    from repro_audit.audit.trace.step_lines import dumps_step
    from repro_audit.probes.torch.random_ledger import RandomLedger
    from repro_audit.probes.torch.step_recorder import TorchStepRecorder

    recipe = build(name)
    model, optimizer, batches = recipe.model, recipe.optimizer, iter(recipe.batches)
    model.train()

    def loss(batch: Any, step: int) -> Any:
        return recipe.loss(model, batch, step=step) if loss_takes_step(recipe.loss) else recipe.loss(model, batch)

    def plain(step: int) -> None:
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        sum(value for value in loss(batch, step).values()).backward()
        optimizer.step()

    if variant == "plain":
        return plain
    if variant == "detect_anomaly":
        def anomaly(step: int) -> None:
            with torch.autograd.set_detect_anomaly(True):
                plain(step)
        return anomaly
    if variant == "debug_mode_hash":
        from torch.utils._debug_mode import DebugMode

        def debug(step: int) -> None:
            with DebugMode(), DebugMode.log_tensor_hashes(hash_fn="hash_tensor"):
                plain(step)
        return debug
    from repro_audit.audit.config import CAPTURE_DEFAULTS

    recorder = TorchStepRecorder(model, optimizer, capture=dict(CAPTURE_DEFAULTS), weight_of=lambda _: 1.0,
                                 ledger=RandomLedger(module_of=lambda: None))
    sink = open(tempfile.mktemp(suffix=".jsonl"), "w")

    def recorded(step: int) -> None:
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        recorder.begin_step(step, batch, replay=lambda: loss(batch, step))  # as the runner's loop does
        recorder.backward(recorder.combine_loss(loss(batch, step)))
        recorder.after_backward()
        optimizer.step()
        recorder.finish_graph()
        sink.write(dumps_step(recorder.end_step()) + "\n")
        sink.flush()

    return recorded


def steady(name: str, rounds: int) -> dict[str, Any]:
    steps = {variant: step_function(name, variant) for variant in VARIANTS}
    number = 1
    # Step 1 captures the op graph once per run: steady state starts at step 2. The untimed rounds after it
    # pay what each variant costs only on first use; a single one left a plain BERT step at 2.4 s.
    for _ in range(1 + WARMUP_ROUNDS):
        for fn in steps.values():
            fn(number)
        number += 1
    wall: dict[str, list[float]] = {variant: [] for variant in steps}
    names = list(steps)
    for index in range(rounds):
        shift = index % len(names)
        for variant in names[shift:] + names[:shift]:
            steps[variant](number)  # settles in after another variant's step; not timed
            start = time.perf_counter()
            steps[variant](number + 1)
            wall[variant].append(time.perf_counter() - start)
        number += 2
    plain = statistics.median(wall["plain"])
    return {"plain_step_ms": round(plain * 1000, 1),
            "ratios": {variant: round(statistics.median(times) / plain, 3) for variant, times in wall.items()}}


def first_step(name: str, repeats: int = 3) -> dict[str, float]:
    """Step 1 of fresh copies, recorded against plain (the op graph and every first-use cost included)."""
    step_function(name, "plain")(1)  # torch's own first use of these ops, paid once, outside the timing
    times: dict[str, list[float]] = {"plain": [], "recorded": []}
    for _ in range(repeats):
        for variant in times:
            fn = step_function(name, variant)
            start = time.perf_counter()
            fn(1)
            times[variant].append(time.perf_counter() - start)
    plain = statistics.median(times["plain"])
    return {"plain_first_ms": round(plain * 1000, 1),
            "first_step_ratio": round(statistics.median(times["recorded"]) / plain, 2)}


def peak_in_child(name: str, variant: str, steps: int = 4) -> dict[str, int]:
    """Run in a fresh process: the resident peak of `steps` steps above the resident size before them."""
    fn = step_function(name, variant)
    for number in (1, 2):
        fn(number)
    reset_peak()
    before = status_bytes("VmRSS")
    for number in range(3, 3 + steps):
        fn(number)
    return {"step_peak": status_bytes("VmHWM") - before}


def largest_tensor_bytes(name: str) -> int:
    recipe = build(name)
    largest = max(p.numel() * p.element_size() for p in recipe.model.parameters())
    outputs: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(
        out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0)) for m in recipe.model.modules()]
    batch = next(iter(recipe.batches))
    recipe.loss(recipe.model, batch)
    for hook in hooks:
        hook.remove()
    return max([largest, *outputs])


def memory(name: str) -> dict[str, Any]:
    if not can_measure():
        return {}
    peaks = {}
    for variant in ("plain", "recorded"):
        runs = []
        for _ in range(3):
            out = subprocess.run([sys.executable, __file__, "--peak", name, variant], capture_output=True,
                                 text=True, check=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
            runs.append(json.loads(out.stdout.strip().splitlines()[-1])["step_peak"])
        peaks[variant] = statistics.median(runs)
    largest = largest_tensor_bytes(name)
    extra = peaks["recorded"] - peaks["plain"]
    return {"extra_peak_mib": round(extra / 2**20, 2), "largest_tensor_mib": round(largest / 2**20, 2),
            "extra_in_largest_tensors": round(extra / largest, 2)}


def keras_row(rounds: int, *, memory: bool) -> dict[str, Any]:
    """The Keras model's row, from bench_keras_fit.py run in a process of its own."""
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_keras_fit.py"), "--row", "--rounds",
               str(max(3, rounds // 2))] + ([] if memory else ["--no-memory"])
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if finished.returncode != 0:
        raise RuntimeError(f"bench_keras_fit.py --row failed: {finished.stderr.strip()[-500:]}")
    row: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return row


def end_to_end(steps: int = 4) -> dict[str, Any]:
    """`repro-audit diff` of the fixture's two configs against the same two recipes run plainly."""
    configs = [FIXTURES / "baseline.yaml", FIXTURES / "zero_entropy_loss.yaml"]
    start = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "diff", *map(str, configs), "--steps",
                               str(steps), "-q", "--json", os.devnull], cwd=ROOT, capture_output=True, text=True,
                              check=False)
    diff = time.perf_counter() - start
    if finished.returncode not in (0, 1):  # 0 identical, 1 differ; anything else means the timing is of a failure
        raise RuntimeError(f"repro-audit diff failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
    plain_script = (
        "import sys, torch; sys.path.insert(0, {folder!r}); from repro_audit.audit.config import load_config;"
        "from repro_audit.audit.recipe import resolve_recipe, as_recipe, loss_takes_step; from pathlib import Path;"
        "c = load_config({config!r}); torch.manual_seed(c.seed);"
        "r = as_recipe(resolve_recipe(c.recipe, config_dir=Path(c.config_dir))(dict(c.params)), spec=c.recipe);"
        "it = iter(r.batches)\n"
        "for step in range({steps}):\n"
        "    b = next(it); r.optimizer.zero_grad(); terms = r.loss(r.model, b, step=step + 1) "
        "if loss_takes_step(r.loss) else r.loss(r.model, b)\n"
        "    sum(c.weight_for(k) * v for k, v in terms.items()).backward(); r.optimizer.step()\n")
    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", plain_script.format(folder=str(ROOT), config=str(config),
                                                                             steps=steps)], cwd=ROOT)
                 for config in configs]
    if any(code != 0 for code in [process.wait() for process in processes]):
        raise RuntimeError("a plain run of the fixture recipe failed")
    plain = time.perf_counter() - start
    return {"diff_s": round(diff, 2), "two_plain_processes_s": round(plain, 2), "ratio": round(diff / plain, 2)}


def main() -> None:
    from benchmarks.real_architectures import ARCHITECTURES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join([*ARCHITECTURES, KERAS]))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-end-to-end", action="store_true")
    parser.add_argument("--peak", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        print(json.dumps(peak_in_child(*args.peak)))
        return
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                               "load_before": [round(n, 2) for n in os.getloadavg()], "models": {}}
    print(f"load average before: {' '.join(map(str, results['load_before']))} on {os.cpu_count()} CPUs")
    print(f"{'model':8} {'plain ms':>9} {'recorded':>9} {'anomaly':>8} {'debugmode':>10} {'1st step':>9} "
          f"{'+peak MiB':>10} {'largest':>8}")
    for name in args.models.split(","):
        if name == KERAS:
            row = keras_row(args.rounds, memory=not args.no_memory)
        else:
            row = {**steady(name, args.rounds), **first_step(name)}
            if not args.no_memory:
                row.update(memory(name))
        results["models"][name] = row
        ratios = row["ratios"]
        print(f"{name:8} {row['plain_step_ms']:>9} {ratios['recorded']:>8}x {_ratio(ratios, 'detect_anomaly'):>8} "
              f"{_ratio(ratios, 'debug_mode_hash'):>10} {row['first_step_ratio']:>8}x "
              f"{row.get('extra_peak_mib', '-'):>10} {row.get('largest_tensor_mib', '-'):>8}", flush=True)
    if not args.no_end_to_end:
        results["end_to_end"] = end_to_end()
        print(f"end to end: repro-audit diff {results['end_to_end']['diff_s']} s, two plain processes "
              f"{results['end_to_end']['two_plain_processes_s']} s: {results['end_to_end']['ratio']}x")
    results["load_after"] = [round(n, 2) for n in os.getloadavg()]
    print(f"load average after: {' '.join(map(str, results['load_after']))}")
    print(json.dumps(results, indent=1))


def _ratio(ratios: dict[str, float], variant: str) -> str:
    return f"{ratios[variant]}x" if variant in ratios else "-"


if __name__ == "__main__":
    main()

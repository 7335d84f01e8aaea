"""Recording overhead on the fixture Transformer, as ratios against a plain step in the same process.

    python benchmarks/bench_torch_recording.py [--rounds 12] [--small]

Plain step, default recording (hashes and statistics of every gradient, parameter and module output, random
ledger, graph digest, NaN provenance armed), recording without NaN provenance, and torch's anomaly mode for
comparison. Steps are interleaved and the median ratio reported, so machine noise hits all variants alike.
Peak memory is compared in separate processes (ru_maxrss), against the size of the largest tensor.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
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
RECIPE = ROOT / "fixtures" / "configs" / "torch" / "nmt_recipe.py"
LARGE = {"vocab": 1000, "d_model": 256, "heads": 4, "enc_layers": 3, "dec_layers": 3, "d_ff": 1024,
         "batch_size": 16, "max_len": 32, "num_batches": 400}
SMALL = {"num_batches": 400}


def load_recipe(params: dict[str, Any]) -> Any:
    sys.path.insert(0, str(RECIPE.parent))
    module = importlib.import_module("nmt_recipe")
    torch.manual_seed(0)
    return module.build(dict(params))


def make_steps(recipe: Any, capture: dict[str, Any]) -> dict[str, Callable[[int], None]]:
    from probes.torch.random_ledger import RandomLedger
    from probes.torch.step_recorder import TorchStepRecorder

    from audit.recipe import loss_takes_step

    model, optimizer = recipe.model, recipe.optimizer
    batches = iter(recipe.batches)
    with_step = loss_takes_step(recipe.loss)

    def loss(batch: Any, step: int) -> Any:
        return recipe.loss(model, batch, step=step) if with_step else recipe.loss(model, batch)
    sink = open(tempfile.mktemp(suffix=".jsonl"), "w")

    def plain(step: int) -> None:
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        terms = loss(batch, step)
        total = sum(value * 1.0 for value in terms.values())
        total.backward()
        optimizer.step()

    def anomaly(step: int) -> None:
        with torch.autograd.set_detect_anomaly(True):
            plain(step)

    def recorder_step(options: dict[str, Any]) -> Callable[[int], None]:
        recorder = TorchStepRecorder(model, optimizer, capture={**capture, **options}, weight_of=lambda _: 1.0,
                                     ledger=RandomLedger(module_of=lambda: None))

        def step_fn(step: int) -> None:
            from audit.trace import format as fmt

            batch = next(batches)
            optimizer.zero_grad(set_to_none=True)
            recorder.begin_step(step, batch)
            total = recorder.combine_loss(loss(batch, step))
            recorder.backward(total)
            recorder.after_backward()
            optimizer.step()
            recorder.finish_graph()
            sink.write(fmt.dumps(recorder.end_step()) + "\n")

        return step_fn

    return {"plain": plain, "recorded": recorder_step({}), "recorded_no_provenance":
            recorder_step({"nan_provenance": False}), "detect_anomaly": anomaly}


def measure(params: dict[str, Any], rounds: int) -> dict[str, Any]:
    from audit.config import CAPTURE_DEFAULTS

    recipe = load_recipe(params)
    steps = make_steps(recipe, dict(CAPTURE_DEFAULTS))
    n_params = sum(p.numel() for p in recipe.model.parameters())
    times: dict[str, list[float]] = {name: [] for name in steps}
    step_number = 2  # steady state: step 1 also captures the op graph, once per run
    for name, fn in steps.items():  # warm-up
        fn(step_number)
        step_number += 1
    for _ in range(rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn(step_number)
            times[name].append(time.perf_counter() - start)
            step_number += 1
    plain = statistics.median(times["plain"])
    return {"parameters": n_params, "plain_step_s": round(plain, 4),
            "ratios": {name: round(statistics.median(t) / plain, 3) for name, t in times.items()}}


def peak_memory(params: dict[str, Any], mode: str) -> int:
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(ROOT)!r});"
            f"import benchmarks.bench_torch_recording as b, resource, json;"
            f"r=b.load_recipe(json.loads({json.dumps(json.dumps(params))}));"
            f"from audit.config import CAPTURE_DEFAULTS; s=b.make_steps(r, dict(CAPTURE_DEFAULTS))[{mode!r}];"
            f"[s(i) for i in range(2, 8)];"
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--small", action="store_true", help="the test-sized fixture instead of ~5M parameters")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    params = SMALL if args.small else LARGE
    result = measure(params, args.rounds)
    if not args.no_memory:
        recipe = load_recipe(params)
        largest = max(p.numel() * p.element_size() for p in recipe.model.parameters())
        plain, recorded = peak_memory(params, "plain"), peak_memory(params, "recorded")
        result["peak_rss_mb"] = {"plain": round(plain / 2**20, 1), "recorded": round(recorded / 2**20, 1),
                                 "extra_over_largest_tensor": round((recorded - plain) / largest, 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

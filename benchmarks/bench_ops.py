"""Cost of `repro-audit ops` and of the zoom-in, as ratios against a plain step in the same process.

    python benchmarks/bench_ops.py [--rounds 5] [--small] [--module encoder.layers.0] [--threads N]

Variants, each on its own copy of the fixture Transformer (same seed, same batches): a plain step; `ops`
(every op executed twice, probes/torch/op_recheck.py, over forward, backward and optimizer); the zoom-in
(op hashes in one module's forward only, probes/torch/op_hashes.py); and torch's prototype DebugMode with
tensor hashes (`torch.utils._debug_mode.DebugMode` + `log_tensor_hashes`) over the whole step, for
comparison. Each variant runs two steps in a row and only the second is timed (a step runs slower right
after another model's); the order rotates every round; the median ratio is reported, by wall and by CPU
time. Targets (issue 25): ops <= 2.5x (it does twice the work at least), zoom-in of one module <= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_torch_recording import LARGE, SMALL, load_recipe

VARIANTS = ("plain", "ops", "zoom", "debug_mode")


def make_step(params: dict[str, Any], variant: str, module: str) -> Callable[[int], None]:
    """One variant's training step on its own model copy."""
    from repro_audit.audit.recipe import loss_takes_step
    from repro_audit.probes.torch.op_hashes import ModuleRegion, OpHashMode
    from repro_audit.probes.torch.op_recheck import OpRecheckMode
    from repro_audit.probes.torch.op_sites import ModuleStack

    recipe = load_recipe(params)
    model, optimizer = recipe.model, recipe.optimizer
    batches = iter(recipe.batches)
    with_step = loss_takes_step(recipe.loss)
    stack = ModuleStack(model) if variant in ("ops", "zoom") else None
    current = stack.current if stack is not None else (lambda: None)
    region = None
    if variant == "zoom":
        region = ModuleRegion(model, module, OpHashMode(module_of=current))
        region.active = True

    def around() -> AbstractContextManager[Any]:
        if variant == "ops":
            return OpRecheckMode(module_of=current)
        if variant == "debug_mode":
            from torch.utils._debug_mode import DebugMode

            return _Both(DebugMode(), DebugMode.log_tensor_hashes(hash_fn="hash_tensor"))
        return nullcontext()

    def step(number: int) -> None:
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        if region is not None:
            region.mode.ops = []
        with around():
            terms = recipe.loss(model, batch, step=number) if with_step else recipe.loss(model, batch)
            sum(terms.values()).backward()
            optimizer.step()

    return step


class _Both:
    """Two context managers entered in order and left in reverse (DebugMode, then its hash logging)."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __enter__(self) -> None:
        self.first.__enter__()
        self.second.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.second.__exit__(*exc)
        self.first.__exit__(*exc)


def measure(params: dict[str, Any], rounds: int, module: str) -> dict[str, Any]:
    steps = {variant: make_step(params, variant, module) for variant in VARIANTS}
    for variant in VARIANTS:  # warm-up: first-call costs (allocator, kernels, custom-op registration)
        steps[variant](1)
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    number = 2
    for round_index in range(rounds):
        order = VARIANTS[round_index % len(VARIANTS):] + VARIANTS[:round_index % len(VARIANTS)]
        for variant in order:
            steps[variant](number)
            started, started_cpu = time.perf_counter(), time.process_time()
            steps[variant](number + 1)
            wall[variant].append(time.perf_counter() - started)
            cpu[variant].append(time.process_time() - started_cpu)
        number += 2
    ratios = {v: statistics.median(w / p for w, p in zip(wall[v], wall["plain"])) for v in VARIANTS}
    cpu_ratios = {v: statistics.median(c / p for c, p in zip(cpu[v], cpu["plain"])) for v in VARIANTS}
    return {"plain_step_ms": round(statistics.median(wall["plain"]) * 1000, 2), "module": module,
            "ratios": {v: round(r, 2) for v, r in ratios.items()},
            "cpu_ratios": {v: round(r, 2) for v, r in cpu_ratios.items()},
            "targets": {"ops": 2.5, "zoom": 1.3}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="The small fixture model instead of the large one.")
    parser.add_argument("--module", default="encoder.layers.0.ff", help="The module the zoom-in hashes.")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(SMALL if args.small else LARGE, args.rounds, args.module), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

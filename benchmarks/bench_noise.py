"""Parallel efficiency of `noise --seeds 8`, and what Ray costs per run against the local process pool.

    python benchmarks/bench_noise.py [--seeds 8] [--steps 5] [--no-ray]

Records `--seeds` seeds of fixtures/configs/torch/baseline.yaml through the local pool (all cores), then,
when Ray is installed, the same runs through a private local Ray instance with as many CPUs. Reports:
- the wall time of the batch against the sum of its runs' own times (each run's worker, start to reaped
  process group): speedup = sum / wall, and parallel efficiency = speedup / min(cores, runs);
- the same against runs alone (two runs one at a time first): runs x solo time / wall. Runs that slow each
  other down (oversubscribed threads) keep the first ratio high and show here;
- Ray: the time to start the instance, the batch's wall time, and the overhead per run,
  (Ray wall - local wall) x min(cores, runs) / runs: what each run costs in Ray's scheduling, task
  start and trace transfer (packed, returned, unpacked) beyond the local pool's.
Both batches run on the same machine in the same invocation, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repro_audit.audit.config import load_config  # noqa: E402
from repro_audit.audit.executors import Executor, LocalPool, make_executor  # noqa: E402
from repro_audit.audit.noise import record_noise  # noqa: E402

BASELINE = ROOT / "fixtures" / "configs" / "torch" / "baseline.yaml"


def timed_batch(executor: Executor, *, seeds: int, steps: int) -> tuple[float, float]:
    """(wall seconds of the whole batch, sum of the runs' own seconds)."""
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as folder:
        started = time.perf_counter()
        _, results = record_noise([load_config(BASELINE)], seeds=seeds, vary="init", steps=steps,
                                  folder=Path(folder), executor=executor)
        wall = time.perf_counter() - started
    return wall, sum(result.seconds or 0.0 for result in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-ray", action="store_true", help="Measure the local pool only.")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    slots = min(cores, args.seeds)
    _, solo = timed_batch(LocalPool(workers=1), seeds=2, steps=args.steps)
    solo /= 2
    wall, own = timed_batch(LocalPool(), seeds=args.seeds, steps=args.steps)
    print(f"local pool, {cores} cores, {args.seeds} runs of {args.steps} steps: wall {wall:.1f} s, runs' own "
          f"times {own:.1f} s in all ({own / args.seeds:.2f} s a run); speedup {own / wall:.2f}x, parallel "
          f"efficiency {own / wall / slots:.0%}")
    print(f"  against runs alone ({solo:.2f} s a run, one at a time): speedup {args.seeds * solo / wall:.2f}x, "
          f"parallel efficiency {args.seeds * solo / wall / slots:.0%}")
    if args.no_ray:
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray: not installed (pip install 'repro-audit[ray]'), not measured")
        return
    started = time.perf_counter()
    pool = make_executor("ray", workers=cores)
    start_up = time.perf_counter() - started
    try:
        ray_wall, ray_own = timed_batch(pool, seeds=args.seeds, steps=args.steps)
    finally:
        pool.close()
    overhead = (ray_wall - wall) * slots / args.seeds
    print(f"ray, local instance of {cores} CPUs: start {start_up:.1f} s; wall {ray_wall:.1f} s, runs' own times "
          f"{ray_own:.1f} s; overhead {overhead:+.2f} s a run against the local pool "
          f"({ray_wall / wall:.2f}x its wall time)")


if __name__ == "__main__":
    main()

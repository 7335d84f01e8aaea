"""Speed of `compare` on large traces with values kept, against a plain read of the same files.

    python benchmarks/bench_compare.py [--params 20] [--steps 5] [--keep DIR]

Records two real runs of an MLP with about `--params` million parameters (`--values all`, seeds 0 and 1 so
every tensor differs and every value must be read and compared), then times a plain read of every file
of both traces and `compare_traces` on them, each after a warm-up read so both come from the page cache.
The target is that comparing is limited by reading: its MB/s close to the plain read's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = textwrap.dedent('''
    """An MLP of about WIDTH*WIDTH*LAYERS parameters on random data."""
    import torch
    from repro_audit import Recipe

    def build(params):
        width, layers = params["width"], params["layers"]
        model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(7)
        batches = [torch.randn(8, width, generator=generator) for _ in range(params["steps"])]

        def loss(model, batch):
            return {"mse": model(batch).pow(2).mean()}

        return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)
''')


def record_pair(folder: Path, million: float, steps: int) -> tuple[Path, Path]:
    from repro_audit.audit.config import load_config
    from repro_audit.audit.executors.local import record_all
    from repro_audit.audit.runner import raise_for_failures

    width, layers = 2048, max(1, round(million * 1e6 / (2048 * 2048)))
    (folder / "big_mlp.py").write_text(RECIPE, encoding="utf-8")
    config = folder / "big.yaml"
    config.write_text(f"recipe: big_mlp:build\nseed: 0\nsteps: {steps}\nparams: {{width: {width}, layers: {layers}, "
                      f"steps: {steps}}}\ncapture: {{values: all, module_outputs: false}}\n", encoding="utf-8")
    jobs = [(load_config(config, overrides=(f"seed={seed}",)), folder / f"run{seed}.trace") for seed in (0, 1)]
    raise_for_failures(record_all(jobs))
    return jobs[0][1], jobs[1][1]


def plain_read(paths: list[Path]) -> int:
    total = 0
    for trace in paths:
        for file in sorted(trace.rglob("*")):
            if file.is_file():
                total += len(file.read_bytes())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=20.0, help="million parameters")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="folder for the traces (default: a temporary one)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-compare-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trace_a, trace_b = record_pair(folder, args.params, args.steps)
    print(f"recorded two runs in {time.perf_counter() - started:.1f} s")

    from repro_audit.audit.diff import compare_traces
    from repro_audit.audit.trace import Trace

    size = plain_read([trace_a, trace_b])  # warm the page cache
    read_times, compare_times = [], []
    for _ in range(3):
        started = time.perf_counter()
        plain_read([trace_a, trace_b])
        read_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        comparison = compare_traces(Trace(trace_a), Trace(trace_b))
        compare_times.append(time.perf_counter() - started)
    read_s, compare_s = min(read_times), min(compare_times)
    parameters = sum(len(s.get("parameters") or {}) for s in Trace(trace_a).steps[:1])
    megabytes = size / 1e6
    print(f"traces: {megabytes:.0f} MB in all ({parameters} parameter tensors, {args.steps} steps, values kept)")
    print(f"plain read:   {read_s:.2f} s  {megabytes / read_s:8.0f} MB/s")
    print(f"compare:      {compare_s:.2f} s  {megabytes / compare_s:8.0f} MB/s  ({compare_s / read_s:.1f}x the read)")
    print(f"divergences: {sum(1 for _ in comparison.walk())}, first: {comparison.first_divergence.name if comparison.first_divergence else None}")


if __name__ == "__main__":
    main()

"""Recording overhead per rank under DDP, as ratios against a plain DDP step in the same process.

    python benchmarks/bench_ddp.py [--nproc 2] [--rounds 12] [--width 512]

Starts itself under torchrun (gloo on CPU, nccl where CUDA is). Each rank trains two DDP copies of one MLP
(same seed, its own shard of the batches): a plain one, and one the runner's step recorder watches (default
capture: hashes and statistics of every gradient, parameter and module output, random ledger, graph digest,
NaN provenance armed), with the calls the runner's loop makes. Both copies' collectives run in the same order
on every rank. As in bench_torch_recording.py, each variant runs two steps in a row and only the second is
timed, the order alternates every round, and each rank reports its median ratio (wall and process CPU time).
Step 1 (op graph capture, term attribution) is left out: it is paid once per run.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)  # set when started by torchrun
    args = parser.parse_args()
    if args.rank_out:
        _rank(args)
        return
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc-per-node={args.nproc}", __file__, "--rounds", str(args.rounds),
                        "--width", str(args.width), "--rank-out", out], check=True, env=env)
        ranks = [json.loads(path.read_text()) for path in sorted(Path(out).glob("rank_*.json"))]
    print(json.dumps({"nproc": args.nproc, "width": args.width, "rounds": args.rounds, "ranks": ranks}, indent=1))


def _rank(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from repro_audit.probes.torch.distributed import join_process_group, wrap_in_ddp
    from repro_audit.probes.torch.random_ledger import RandomLedger
    from repro_audit.probes.torch.step_recorder import TorchStepRecorder

    facts = join_process_group()
    rank = facts["rank"]
    models, optimizers = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(args.width, 4 * args.width), torch.nn.GELU(),
                                    torch.nn.Linear(4 * args.width, args.width), torch.nn.LayerNorm(args.width),
                                    torch.nn.Linear(args.width, 10))
        models.append(model)
        optimizers.append(torch.optim.AdamW(model.parameters(), lr=1e-3))
    wrapped = [wrap_in_ddp(model) for model in models]
    recorder = TorchStepRecorder(models[1], optimizers[1], capture={}, weight_of=lambda term: 1.0,
                                 ledger=RandomLedger(module_of=lambda: None))
    data = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(64, args.width, generator=data), torch.randint(0, 10, (64,), generator=data))
               for _ in range(8)]
    step = {"n": 0}

    def plain(batch: Any) -> None:
        optimizers[0].zero_grad(set_to_none=True)
        x, y = batch
        torch.nn.functional.cross_entropy(wrapped[0](x), y).backward()
        optimizers[0].step()

    def recorded(batch: Any) -> None:
        step["n"] += 1
        optimizers[1].zero_grad(set_to_none=True)
        recorder.begin_step(step["n"], batch)
        x, y = batch
        total = recorder.combine_loss({"ce": torch.nn.functional.cross_entropy(wrapped[1](x), y)})
        recorder.backward(total)
        recorder.after_backward()
        optimizers[1].step()
        recorder.finish_graph()
        recorder.end_step()

    variants = {"plain": plain, "recorded": recorded}
    for name in ("plain", "recorded"):  # warm-up, and the recorder's step 1
        variants[name](batches[0])
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "recorded": []}
    for index in range(args.rounds):
        order = ("plain", "recorded") if index % 2 == 0 else ("recorded", "plain")
        for name in order:
            batch = batches[index % len(batches)]
            variants[name](batch)
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            variants[name](batch)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            dist.barrier()
    recorder.close()
    wall_ratio = statistics.median(r[0] / p[0] for r, p in zip(times["recorded"], times["plain"]))
    cpu_ratio = statistics.median(r[1] / p[1] for r, p in zip(times["recorded"], times["plain"]) if p[1] > 0)
    result = {"rank": rank, "backend": facts["backend"], "ratio": round(wall_ratio, 3),
              "cpu_ratio": round(cpu_ratio, 3),
              "plain_step_ms": round(1000 * statistics.median(p[0] for p in times["plain"]), 2),
              "recorded_step_ms": round(1000 * statistics.median(r[0] for r in times["recorded"]), 2)}
    Path(args.rank_out, f"rank_{rank:02d}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

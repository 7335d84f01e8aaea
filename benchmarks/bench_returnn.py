"""Recording overhead on RETURNN's own torch engine, as a ratio against RETURNN's own step.

    python benchmarks/bench_returnn.py [--backend torch|tf] [--steps 40] [--rounds 3]

Each variant runs in a fresh process (RETURNN keeps global state): `plain` is RETURNN's engine training the
fixture config (fixtures/returnn/tiny_lstm_torch.config, per-head auxiliary losses marked) with nothing
attached; `recorded` is the same engine under `framework: returnn` recording (default capture: hashes and
statistics of gradients, parameters, optimizer state and module outputs, random ledger, graph digest).
A step's time is the interval between two consecutive ends of RETURNN's updater step (data loading,
forward, backward and update included), the first five steps left out (step 1 captures the op graph);
the median interval per variant, the median ratio over rounds. The fixture model is tiny (786 parameters),
so the ratio is the recorder's fixed cost per step at its largest relative to the step.
`--backend tf` does the same with RETURNN's TF net-dict engine (fixtures/returnn/tiny_net_dict_tf.config,
per-head eval-layer losses): a step ends when RETURNN's training `session.run` returns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "returnn"
WARMUP = 5


CONFIGS = {"torch": "tiny_lstm_torch.config", "tf": "tiny_net_dict_tf.config"}


def _params(steps: int) -> dict[str, Any]:
    return {"aux_loss": "per_head", "aux_loss_scale": 0.0,
            "train": {"class": "DummyDataset", "input_dim": 9, "output_dim": 2, "num_seqs": 4 * (steps + 2),
                      "seq_len": 6}}


def plain(steps: int, backend: str) -> list[float]:
    """RETURNN's engine alone: step ends, timed from a wrapper on its updater (torch) or on its training
    session.run (TF)."""
    sys.path.insert(0, str(FIXTURES))
    from returnn import __main__ as rnn

    ends: list[float] = []

    def timed_session(session: Any) -> Any:
        run = session.run

        def timed(fetches: Any, *args: Any, **kwargs: Any) -> Any:
            out = run(fetches, *args, **kwargs)
            if isinstance(fetches, dict) and "optim_op" in fetches:
                ends.append(time.perf_counter())
            return out

        session.run = timed
        return session

    with tempfile.TemporaryDirectory() as scratch:
        updates = {"model": f"{scratch}/model", "log": None, **_params(steps)}
        if backend == "tf":
            updates["wrap_tf_session"] = timed_session
        rnn.init(config_filename=str(FIXTURES / CONFIGS[backend]), config_updates=updates)
        engine = rnn.engine
        engine.init_train_from_config(rnn.config, rnn.train_data, rnn.dev_data, rnn.eval_data)
        if backend == "torch":
            update = engine._updater.step

            def timed(**kwargs: Any) -> None:
                update(**kwargs)
                ends.append(time.perf_counter())

            engine._updater.step = timed
        engine.train()
        rnn.finalize()
    return ends[:steps]


def recorded(steps: int, backend: str) -> list[float]:
    """The same engine recorded by repro-audit: step ends from the recorder's progress callback."""
    sys.path.insert(0, str(ROOT))
    from repro_audit.audit.config import RunConfig
    from repro_audit.audit.trace import TraceWriter
    from repro_audit.probes.returnn.recorder import record_run

    ends: list[float] = []
    config = RunConfig.from_dict({"framework": "returnn", "returnn_config": CONFIGS[backend],
                                  "steps": steps, "params": _params(steps)}, config_dir=str(FIXTURES))
    with tempfile.TemporaryDirectory() as scratch:
        writer = TraceWriter(Path(scratch) / "run.trace", framework="returnn", config=config.to_dict(),
                             label="bench")
        record_run(config, writer, progress=lambda step: ends.append(time.perf_counter()))
        writer.finish(complete=True)
    return ends


def _median_step(ends: list[float]) -> float:
    intervals = [b - a for a, b in zip(ends[WARMUP:], ends[WARMUP + 1:])]
    return statistics.median(intervals)


def _child(variant: str, steps: int, backend: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(steps), "--backend",
                          backend], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "recorded"])
    parser.add_argument("--backend", choices=sorted(CONFIGS), default="torch")
    args = parser.parse_args()
    if args.child:
        ends = plain(args.steps, args.backend) if args.child == "plain" else recorded(args.steps, args.backend)
        print(_median_step(ends))
        return
    rounds = []
    for _ in range(args.rounds):
        step_plain = _child("plain", args.steps, args.backend)
        step_recorded = _child("recorded", args.steps, args.backend)
        rounds.append({"plain_ms": step_plain * 1e3, "recorded_ms": step_recorded * 1e3,
                       "ratio": step_recorded / step_plain})
    print(json.dumps({"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds),
                      "backend": args.backend, "steps": args.steps, "warmup_steps_left_out": WARMUP}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

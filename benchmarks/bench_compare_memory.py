"""Memory of `compare` on two long runs that drift apart: every tensor differs at every step.

    python benchmarks/bench_compare_memory.py [--tensors 200] [--steps 200] [--keep DIR]

Records two real runs (seeds 0 and 1) of a model with `--tensors` parameter tensors for `--steps` steps,
then runs `repro-audit compare A B --json` in a fresh process and reports its peak resident memory
(ru_maxrss of the child), the JSON's size and the divergences counted against those kept. The figure to
hold: under 1 GiB peak and a JSON of a few MB for 200 tensors x 200 steps, whatever the number of
divergences (audit/diff/registry.py keeps the first MAX_KEPT_PER_CATEGORY of each category whole).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RECIPE = textwrap.dedent('''
    """`tensors` / 2 small linear layers, trained on random data."""
    import torch
    from repro_audit import Recipe

    def build(params):
        model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(params["tensors"] // 2)])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(7)
        batches = [torch.randn(2, 4, generator=generator) for _ in range(params["steps"])]

        def loss(model, batch):
            return {"mse": model(batch).pow(2).mean()}

        return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)
''')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensors", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-compare-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "drift.py").write_text(RECIPE, encoding="utf-8")
    traces = []
    for seed in (0, 1):
        config = folder / f"seed{seed}.yaml"
        config.write_text(f"recipe: drift:build\nseed: {seed}\nsteps: {args.steps}\ntimeout: 3600\n"
                          f"params: {{tensors: {args.tensors}, steps: {args.steps}}}\n", encoding="utf-8")
        trace = folder / f"seed{seed}.trace"
        if not trace.exists():
            subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "record", str(config), "-o", str(trace), "-q"],
                           check=True, cwd=ROOT)
        traces.append(trace)
    report = folder / "comparison.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "compare", *map(str, traces), "--json",
                                str(report), "-q"], capture_output=True, text=True, cwd=ROOT)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    data = json.loads(report.read_text(encoding="utf-8"))
    counts = data.get("category_counts") or {}
    print(json.dumps({
        "tensors": args.tensors, "steps": args.steps, "exit_code": completed.returncode,
        "trace_mib": round(sum(f.stat().st_size for t in traces for f in t.rglob("*") if f.is_file()) / 2**20, 1),
        "compare_peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
        "json_mib": round(report.stat().st_size / 2**20, 2),
        "diverged": sum(c.get("diverged", 0) for c in counts.values()),
        "omitted": sum(c.get("omitted", 0) for c in counts.values()),
    }, indent=2))


if __name__ == "__main__":
    main()

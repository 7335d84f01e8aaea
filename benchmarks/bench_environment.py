"""Cost of the environment fingerprint in a fresh process: without the file-digest cache, cold and warm.

    python benchmarks/bench_environment.py [--framework torch|tensorflow] [--rounds 5]

Each round starts new processes that import the framework, then time one `base_environment` call (what a
recorded run pays twice): with `REPRO_AUDIT_CACHE_DIR=off`, with an empty cache folder (cold) and again
with the folder the cold process wrote (warm). Prints the median seconds of each (docs/cache.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
import {framework}
from repro_audit.probes.common.environment import base_environment
start = time.perf_counter()
base_environment(recipe_dir=None)
print(time.perf_counter() - start)
"""


def _timed(framework: str, cache: str) -> float:
    env = {**os.environ, "REPRO_AUDIT_CACHE_DIR": cache, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", CHILD.format(framework=framework)], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "tensorflow"), default="torch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
    for _ in range(args.rounds):
        times["off"].append(_timed(args.framework, "off"))
        with tempfile.TemporaryDirectory(prefix="bench-environment-") as folder:
            times["cold"].append(_timed(args.framework, folder))
            times["warm"].append(_timed(args.framework, folder))
    for name, values in times.items():
        print(f"{args.framework} {name:>4}: {statistics.median(values):.3f} s (median of {len(values)})")


if __name__ == "__main__":
    main()

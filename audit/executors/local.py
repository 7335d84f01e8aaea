"""The default executor: every core of this machine, one isolated worker process per run.

Each run is `repro_audit.audit.runner.record`: a fresh Python process of its own session, killed with its process group
when it ends, so a pool of them is a process pool with the runner's guarantees (timeouts, partial traces,
nothing left behind). Threads only wait on those processes. An interrupt in the waiting thread stops every
worker at once and keeps their partial traces. This is the one pool: `noise`, `diff --seeds` and `bisect`
use it as it is (all cores, one retry, one intra-op thread a run: audit/executors/base.py: thread_env), and
`diff`, `check`, `verify` and the pytest plugin through `record_all` (two at a time, no retry, the caller's
thread count).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.executors.base import (
    DoneCounter,
    RunJob,
    RunsDone,
    as_retried,
    thread_env,
    worth_retrying,
)
from repro_audit.audit.runner import ProgressCallback, RunResult, Stop, record


class LocalPool:
    """`workers` runs at a time (all cores by default); a failed or lost run is run `retries` more times.

    `own_threads=False` leaves each run the intra-op thread count it would have alone (torch's default):
    a comparison of two runs records what the user's own runs record."""

    name = "local"

    def __init__(self, *, workers: int | None = None, retries: int = 1, own_threads: bool = True) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.retries = retries
        self.env = thread_env() if own_threads else {}

    def run(self, jobs: Sequence[RunJob], *, on_done: RunsDone | None = None,
            progress: ProgressCallback | None = None) -> list[RunResult]:
        if not jobs:
            return []
        counter = DoneCounter(len(jobs), on_done)
        stop = Stop()
        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(jobs)))
        try:
            futures = [pool.submit(self._run_one, job, stop, counter, progress) for job in jobs]
            results = [future.result() for future in futures]
        except BaseException as exc:
            stop.set(exc)  # the threads kill their workers and keep the partial traces
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return results

    def close(self) -> None:
        """Nothing outlives `run`: every worker's process group is already gone."""

    def _run_one(self, job: RunJob, stop: Stop, counter: DoneCounter,
                 progress: ProgressCallback | None) -> RunResult:
        def attempt() -> RunResult:
            return record(job.config, job.trace_path, progress=progress, stop=stop, mode=job.mode, zoom=job.zoom,
                          env=self.env)

        result = attempt()
        for _ in range(self.retries):
            if not worth_retrying(result) or stop.is_set():
                break
            result = as_retried(result, attempt())
        counter.count(result)
        return result


def record_all(jobs: Sequence[tuple[RunConfig, Path]], *, progress: ProgressCallback | None = None,
               parallel: bool | None = None, workers: int = 2, mode: str = "record",
               zoom: dict[str, Any] | None = None) -> list[RunResult]:
    """The runs of `diff`, `check`, `verify`, the zoom-in and the pytest plugin, through the local pool as
    those always ran: `workers` at a time (two by default, one unless `parallel` and the machine has two
    cores), never retried (a crash or a hang there is the user's to see, and a retried hang would double
    the wait), each with the caller's thread count. `mode` and `zoom` as for runner.record."""
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2 and len(jobs) > 1
    pool = LocalPool(workers=workers if parallel else 1, retries=0, own_threads=False)
    return pool.run([RunJob(config, Path(path), mode=mode, zoom=zoom) for config, path in jobs], progress=progress)

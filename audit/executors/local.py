"""The default executor: every core of this machine, one isolated worker process per run.

Each run is `repro_audit.audit.runner.record`: a fresh Python process of its own session, killed with its process group
when it ends, so a pool of them is a process pool with the runner's guarantees (timeouts, partial traces,
nothing left behind). Threads only wait on those processes. Each run gets one intra-op thread unless
OMP_NUM_THREADS says otherwise (audit/executors/base.py: thread_env).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from repro_audit.audit.executors.base import (
    DoneCounter,
    RunJob,
    RunsDone,
    as_retried,
    thread_env,
    worth_retrying,
)
from repro_audit.audit.runner import RunResult, Stop, record


class LocalPool:
    """`workers` runs at a time (all cores by default); a failed or lost run is run once more."""

    name = "local"

    def __init__(self, *, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)

    def run(self, jobs: Sequence[RunJob], *, on_done: RunsDone | None = None) -> list[RunResult]:
        if not jobs:
            return []
        counter = DoneCounter(len(jobs), on_done)
        stop = Stop()
        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(jobs)))
        try:
            futures = [pool.submit(self._run_one, job, stop, counter) for job in jobs]
            results = [future.result() for future in futures]
        except BaseException as exc:
            stop.set(exc)  # the threads kill their workers and keep the partial traces
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return results

    def close(self) -> None:
        """Nothing outlives `run`: every worker's process group is already gone."""

    @staticmethod
    def _run_one(job: RunJob, stop: Stop, counter: DoneCounter) -> RunResult:
        env = thread_env()
        result = record(job.config, job.trace_path, stop=stop, env=env)
        if worth_retrying(result) and not stop.is_set():
            result = as_retried(result, record(job.config, job.trace_path, stop=stop, env=env))
        counter.count(result)
        return result

"""Runs on a Ray cluster: `--executor ray --address auto|host:port` (or a private local instance).

Ray is an optional extra (`pip install 'repro-audit[ray]'`), imported when this executor is made. Each run is
one Ray task (one CPU) that records in the runner's isolated worker process on its node and returns the trace
as bytes (audit/executors/ray_task.py). A task whose worker or node is lost counts as a failed run: it is
retried once by us, not by Ray, so the retry is reported the same way as the local pool's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repro_audit.audit.errors import UserError
from repro_audit.audit.executors.base import (
    DoneCounter,
    RunJob,
    RunsDone,
    as_retried,
    lost_run,
    worth_retrying,
)
from repro_audit.audit.executors.ray_task import job_payload, record_packed, unpack
from repro_audit.audit.runner import ProgressCallback, RunResult

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
LOCAL = "local"  # a Ray instance of our own on this machine, started here and shut down in close()


class RayPool:
    """Submits every run at once; Ray schedules them on the cluster's CPUs."""

    name = "ray"

    def __init__(self, *, address: str = LOCAL, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("Ray is not installed: pip install 'repro-audit[ray]'") from None
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            env = {"PYTHONPATH": PROJECT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
            options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                                       "include_dashboard": False, "logging_level": "ERROR"}
            if address == LOCAL:
                options["num_cpus"] = num_cpus or os.cpu_count() or 1
            try:
                ray.init(address=None if address == LOCAL else address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot reach the Ray cluster at {address!r}: {' '.join(str(exc).split())[:200]}") \
                    from None
        self._task = ray.remote(num_cpus=1, max_retries=0)(record_packed)

    def run(self, jobs: Sequence[RunJob], *, on_done: RunsDone | None = None,
            progress: ProgressCallback | None = None) -> list[RunResult]:
        """`progress` is not called: a task's steps are not seen from here, only the runs done (`on_done`)."""
        ray = self._ray
        counter = DoneCounter(len(jobs), on_done)
        results: list[RunResult | None] = [None] * len(jobs)
        first: dict[int, RunResult] = {}
        pending = {self._submit(job): index for index, job in enumerate(jobs)}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ready[0])
                result = self._result(jobs[index], ready[0])
                if index in first:
                    result = as_retried(first[index], result)
                elif worth_retrying(result):
                    first[index] = result
                    pending[self._submit(jobs[index])] = index
                    continue
                results[index] = result
                counter.count(result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [result for result in results if result is not None]

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()

    def _submit(self, job: RunJob) -> Any:
        return self._task.remote(job_payload(job.config, mode=job.mode, zoom=job.zoom))

    def _result(self, job: RunJob, ref: Any) -> RunResult:
        try:
            packed = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            return lost_run(job.config, exc, where="Ray worker")
        trace_path = None
        if packed.get("archive") is not None:
            unpack(packed["archive"], job.trace_path)
            trace_path = job.trace_path
        return RunResult(job.config.label, trace_path, bool(packed["ok"]), packed.get("error"),
                         seconds=packed.get("seconds"))

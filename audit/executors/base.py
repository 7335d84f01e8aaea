"""What every executor shares: a job, the retry rule, and the count of runs done.

An executor takes recorded runs (a config and the trace folder it must end up in) and returns how each
ended. Where the run happens (a local process, a Ray worker on another machine) is the executor's business;
the caller always gets the trace back as files at the path it asked for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from repro_audit.audit.config import RunConfig
from repro_audit.audit.runner import ProgressCallback, RunResult

RunsDone = Callable[[int, int, RunResult], None]  # (runs done, runs in all, the run that just ended)

# A user error (bad config, a recipe that cannot take a key) and an interrupt end the same way every time;
# anything else (a crash, a killed or lost worker, a hang) may be the machine's and gets one more try.
NOT_RETRIED = ("user_error", "interrupted")


def thread_env() -> dict[str, str]:
    """The intra-op thread count of every run an executor starts: the caller's OMP_NUM_THREADS, else 1.

    Many runs share the cores; each taking all of them (torch's default) oversubscribes the machine, and on
    two cores two runs at once took 2.5 times as long each. One thread a run is also what Ray gives a task,
    so both executors record the same thread count (it is in each trace) and the same float reductions.
    """
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or "1"}


@dataclass(frozen=True)
class RunJob:
    """One run: the config and where its trace must be when the executor returns. `mode` and `zoom` as for
    runner.record: a recording (default), `ops`, or the zoom-in of check/diff."""

    config: RunConfig
    trace_path: Path
    mode: str = "record"
    zoom: dict[str, Any] | None = None


class Executor(Protocol):
    """Runs jobs, retrying a failed or lost run once; results in the order of the jobs. `progress` gets each
    run's steps where the executor can see them (the local pool; Ray reports runs done only)."""

    name: str

    def run(self, jobs: Sequence[RunJob], *, on_done: RunsDone | None = None,
            progress: ProgressCallback | None = None) -> list[RunResult]: ...

    def close(self) -> None: ...


def worth_retrying(result: RunResult) -> bool:
    return not result.ok and (result.error or {}).get("kind") not in NOT_RETRIED


def as_retried(first: RunResult, second: RunResult) -> RunResult:
    """The second attempt's result, saying how the first ended."""
    return replace(second, attempts=first.attempts + 1, first_error=first.error,
                   seconds=(first.seconds or 0.0) + (second.seconds or 0.0))


class DoneCounter:
    """Thread-safe "runs done / total" for the progress line."""

    def __init__(self, total: int, on_done: RunsDone | None) -> None:
        self.total, self.on_done = total, on_done
        self.done = 0
        self._lock = threading.Lock()

    def count(self, result: RunResult) -> None:
        with self._lock:
            self.done += 1
            if self.on_done is not None:
                self.on_done(self.done, self.total, result)


def lost_run(config: RunConfig, exc: BaseException, *, where: str) -> RunResult:
    """A run whose worker vanished before it could say how it ended (a Ray node died, a task was killed)."""
    message = " ".join(str(exc).split())[:300] or type(exc).__name__
    error: dict[str, Any] = {"kind": "lost", "type": type(exc).__name__, "step": None, "traceback": "",
                             "message": f"the {where} running it was lost: {message}"}
    return RunResult(config.label, None, False, error)

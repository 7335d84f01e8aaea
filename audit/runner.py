"""Run configs in isolated subprocesses and collect their traces.

One fresh Python process per run: nothing (imports, RNG state, thread pools) leaks from one run into the
next, a hang is killed at the config's timeout, and a crash in one run never loses the other run's trace.
A run counts as recorded only when its worker said "done" and left a complete trace; when it ends, however
it ends, its whole process group is killed, so nothing the recipe forked outlives it. An interrupt of the
parent (an exception in the thread that waits, or `stop` set for runs waited on by other threads) kills the
workers at once and keeps their partial traces with error kind "interrupted". Several runs at a time go
through audit/executors (the local pool, or Ray).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.run_process import end_group, has_exited, interrupted_error
from repro_audit.audit.tool_path import worker_environment
from repro_audit.audit.trace import finalize_partial
from repro_audit.audit.trace import format as fmt

ProgressCallback = Callable[[str, int, int], None]  # (label, step, steps)

POLL_S = 0.05
READER_WAIT_S = 60.0


@dataclass
class RunResult:
    """How one run ended and where its (possibly incomplete) trace is."""

    label: str
    trace_path: Path | None
    ok: bool
    error: dict[str, Any] | None = None
    seconds: float | None = None  # the run's own wall time, from start of its worker to its reaped group
    attempts: int = 1  # an executor retries a failed or lost run once (audit/executors)
    first_error: dict[str, Any] | None = None  # how the first attempt ended, when it was retried

    def failure_line(self) -> str:
        error = self.error or {}
        kind = error.get("kind", "crash")
        message = error.get("message", "unknown error")
        step = error.get("step")
        where = f" at step {step}" if step else ""
        kept = f"; partial trace kept at {self.trace_path}" if self.trace_path else ""
        if self.attempts > 1:
            kept += f" (retried once; the first attempt ended: {(self.first_error or {}).get('kind', 'crash')})"
        if kind == "user_error":
            return f"run {self.label!r}: {message}{kept}"
        if kind == "timeout":
            return f"run {self.label!r} timed out{where}: {message}{kept}"
        if kind in ("interrupted", "early_exit"):
            return f"run {self.label!r} stopped{where}: {message}{kept}"
        return f"run {self.label!r} failed{where}: {error.get('type', 'Error')}: {message}{kept}"


class Stop:
    """Set by the thread an interrupt reached; the threads that wait on workers see it and stop them."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.cause: BaseException | None = None

    def set(self, cause: BaseException) -> None:
        self.cause = cause
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def record(config: RunConfig, trace_path: str | os.PathLike[str], *,
           progress: ProgressCallback | None = None, stop: Stop | None = None,
           mode: str = "record", zoom: dict[str, Any] | None = None,
           env: dict[str, str] | None = None) -> RunResult:
    """Record one config into `trace_path` in a fresh subprocess; never raises for a failed run. `env`: variables
    set for the worker on top of ours (an executor's thread count).

    `mode="ops"` runs `repro-audit ops` there instead (every op twice; ops.json in the trace folder);
    `mode="zoom"` the zoom-in of check/diff, `zoom` saying which step and module (zoom.json); `mode="drift"`
    (runs of N ranks) the writes to the tensors that drifted between ranks (writers.json in each rank folder).

    An exception while waiting (an interrupt) kills the worker, finalises its partial trace and propagates.
    """
    trace_path = Path(trace_path)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    if config.nproc:
        from repro_audit.audit.launch import record_ranks

        return record_ranks(config, trace_path, progress=progress, stop=stop, mode=mode, zoom=zoom)
    payload = json.dumps({"config": config.to_dict(), "config_dir": config.config_dir,
                          "source": config.source, "mode": mode, "zoom": zoom})
    started = time.monotonic()
    result = _Worker(config, trace_path, progress, env or {}).run(payload, stop)
    result.seconds = time.monotonic() - started
    return result


def raise_for_failures(results: Sequence[RunResult], *, traces_kept: bool = True) -> None:
    """One RunFailed for every failed run; `traces_kept=False` when the caller removes the traces, so the
    message does not point at them."""
    failed = [result if traces_kept else replace(result, trace_path=None)
              for result in results if not result.ok]
    if failed:
        raise RunFailed("; ".join(result.failure_line() for result in failed),
                        trace_path=str(failed[0].trace_path) if failed[0].trace_path else None)


class _Worker:
    """One worker process, from start to a reaped process group."""

    def __init__(self, config: RunConfig, trace_path: Path, progress: ProgressCallback | None,
                 extra_env: dict[str, str]) -> None:
        self.config, self.trace_path, self.progress = config, trace_path, progress
        self.extra_env = extra_env
        self.events: list[dict[str, Any]] = []

    def run(self, payload: str, stop: Stop | None) -> RunResult:
        read_fd, write_fd = os.pipe()
        env = {**worker_environment(os.environ), **self.extra_env}
        command = [self.config.python or sys.executable, "-m", "repro_audit.audit.worker", "--trace", str(self.trace_path),
                   "--events-fd", str(write_fd), "--parent-pid", str(os.getpid())]
        try:
            # A session of its own: the terminal's Ctrl-C goes to us, not to the worker, and one killpg ends
            # the worker and anything the recipe forked.
            process = subprocess.Popen(command, pass_fds=(write_fd,), env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        reader = threading.Thread(target=self._read_events, args=(read_fd,), daemon=True)
        reader.start()
        try:
            _send(process, payload)
            ending = self._wait(process, stop)
        except BaseException as exc:
            end_group(process)
            reader.join(timeout=5)
            try:
                self._keep_partial(interrupted_error(exc, self._last_step()))
            except Exception:
                pass
            raise
        end_group(process)
        # The group is dead, so the pipe is at its end unless something escaped the group (setsid) and
        # holds it; wait long enough for a starved reader thread on a busy machine, not forever.
        reader.join(timeout=READER_WAIT_S)
        stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        return self._result(ending, process.returncode, stderr, stop.cause if stop is not None else None)

    def _wait(self, process: subprocess.Popen[bytes], stop: Stop | None) -> str:
        deadline = time.monotonic() + self.config.timeout
        while not has_exited(process):
            if stop is not None and stop.is_set():
                return "interrupted"
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(POLL_S)
        return "exited"

    def _result(self, ending: str, returncode: int, stderr: str, cause: BaseException | None) -> RunResult:
        label, step = self.config.label, self._last_step() + 1
        if ending == "interrupted":
            return self._failed(interrupted_error(cause, step - 1))
        if ending == "timeout":
            return self._failed({"kind": "timeout", "type": "Timeout", "step": step, "traceback": "",
                                 "message": f"no end after {self.config.timeout:g} s (config 'timeout'); "
                                            f"killed during step {step}"})
        done = any(event.get("event") == "done" for event in self.events)
        if returncode == 0 and done and _is_complete(self.trace_path):
            return RunResult(label, self.trace_path, True)
        reported = next((event for event in self.events if event.get("event") == "error"), None)
        if reported is not None:
            kept = self.trace_path if self.trace_path.exists() else None
            return RunResult(label, kept, False, reported)
        if returncode == 0:  # os._exit(0) in the recipe, or a worker that ended without saying "done"
            what = "finishing its trace" if done else f"finishing step {step}"
            return self._failed({"kind": "early_exit", "type": "EarlyExit", "step": step,
                                 "traceback": stderr[-4000:],
                                 "message": f"the run's process exited with code 0 before {what}"})
        # Killed by a signal or died before it could report (segfault, OOM kill, os._exit(n)).
        return self._failed({"kind": "crash", "type": "ProcessDied", "step": step,
                             "traceback": stderr[-4000:], "message": _death_message(returncode, stderr)})

    def _failed(self, error: dict[str, Any]) -> RunResult:
        return RunResult(self.config.label, self._keep_partial(error), False, error)

    def _keep_partial(self, error: dict[str, Any]) -> Path | None:
        """Turn what the worker left in `<trace>.partial/` into an incomplete trace."""
        return finalize_partial(self.trace_path, error=error)

    def _last_step(self) -> int:
        return max((int(event.get("step", 0)) for event in list(self.events) if event.get("event") == "step"),
                   default=0)

    def _read_events(self, fd: int) -> None:
        with os.fdopen(fd, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(event, dict):
                    continue
                self.events.append(event)
                if self.progress and event.get("event") == "step":
                    steps = int(event.get("steps", self.config.steps))
                    self.progress(self.config.label, int(event["step"]), steps)


def _send(process: subprocess.Popen[bytes], payload: str) -> None:
    """The config on the worker's stdin; a worker that died first is reported by how it ended."""
    assert process.stdin is not None
    try:
        process.stdin.write(payload.encode("utf-8"))
        process.stdin.close()
    except BrokenPipeError:
        pass


def _is_complete(trace_path: Path) -> bool:
    try:
        manifest = json.loads((trace_path / fmt.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("complete") is True


def _death_message(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the run's process was killed by {name}"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"the run's process exited with code {returncode}" + (f": {last[-1]}" if last else "")

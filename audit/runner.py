"""Run configs in isolated subprocesses and collect their traces.

One fresh Python process per run: nothing (imports, RNG state, thread pools) leaks from one run into the
next, a hang is killed at the config's timeout, and a crash in one run never loses the other run's trace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from audit.config import RunConfig
from audit.errors import RunFailed
from audit.trace import finalize_partial

ProgressCallback = Callable[[str, int, int], None]  # (label, step, steps)

EXIT_USER_ERROR = 3


@dataclass
class RunResult:
    """How one run ended and where its (possibly incomplete) trace is."""

    label: str
    trace_path: Path | None
    ok: bool
    error: dict[str, Any] | None = None

    def failure_line(self) -> str:
        error = self.error or {}
        kind = error.get("kind", "crash")
        message = error.get("message", "unknown error")
        step = error.get("step")
        where = f" at step {step}" if step else ""
        kept = f"; partial trace kept at {self.trace_path}" if self.trace_path else ""
        if kind == "user_error":
            return f"run {self.label!r}: {message}{kept}"
        if kind == "timeout":
            return f"run {self.label!r} timed out{where}: {message}{kept}"
        return f"run {self.label!r} failed{where}: {error.get('type', 'Error')}: {message}{kept}"


def record(config: RunConfig, trace_path: str | os.PathLike[str], *,
           progress: ProgressCallback | None = None) -> RunResult:
    """Record one config into `trace_path` in a fresh subprocess; never raises for a failed run."""
    trace_path = Path(trace_path)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="repro-audit-") as scratch:
        config_file = Path(scratch) / "config.json"
        config_file.write_text(json.dumps({"config": config.to_dict(), "config_dir": config.config_dir,
                                           "source": config.source}), encoding="utf-8")
        return _run_worker(config, config_file, trace_path, progress)


def record_all(jobs: Sequence[tuple[RunConfig, Path]], *, progress: ProgressCallback | None = None,
               parallel: bool | None = None) -> list[RunResult]:
    """Record several configs, two at a time where the machine has the cores for it."""
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2 and len(jobs) > 1
    if not parallel:
        return [record(config, path, progress=progress) for config, path in jobs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(record, config, path, progress=progress) for config, path in jobs]
        return [future.result() for future in futures]


def raise_for_failures(results: Sequence[RunResult]) -> None:
    failed = [result for result in results if not result.ok]
    if failed:
        raise RunFailed("; ".join(result.failure_line() for result in failed),
                        trace_path=str(failed[0].trace_path) if failed[0].trace_path else None)


def _run_worker(config: RunConfig, config_file: Path, trace_path: Path,
                progress: ProgressCallback | None) -> RunResult:
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = project_root + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "audit.worker", "--config-json", str(config_file),
               "--trace", str(trace_path), "--events-fd", str(write_fd)]
    process = subprocess.Popen(command, pass_fds=(write_fd,), env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    os.close(write_fd)
    events: list[dict[str, Any]] = []
    reader = threading.Thread(target=_read_events, args=(read_fd, events, config, progress), daemon=True)
    reader.start()
    deadline = time.monotonic() + config.timeout
    timed_out = False
    while process.poll() is None:
        if time.monotonic() > deadline:
            timed_out = True
            _kill_group(process)
            break
        time.sleep(0.05)
    process.wait()
    reader.join(timeout=5)
    stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    last_step = max((event.get("step", 0) for event in events if event.get("event") == "step"), default=0)
    if timed_out:
        error = {"kind": "timeout", "type": "Timeout", "step": last_step + 1, "traceback": "",
                 "message": f"no end after {config.timeout:g} s (config 'timeout'); killed during step "
                            f"{last_step + 1}"}
        return RunResult(config.label, finalize_partial(trace_path, error=error), False, error)
    if process.returncode == 0:
        return RunResult(config.label, trace_path, True)
    reported = next((event for event in events if event.get("event") == "error"), None)
    if reported is not None:
        return RunResult(config.label, trace_path if trace_path.exists() else None, False, reported)
    # Killed by a signal or died before it could report (segfault, OOM kill, os._exit).
    error = {"kind": "crash", "type": "ProcessDied", "step": last_step + 1, "traceback": stderr[-4000:],
             "message": _death_message(process.returncode, stderr)}
    return RunResult(config.label, finalize_partial(trace_path, error=error), False, error)


def _read_events(fd: int, events: list[dict[str, Any]], config: RunConfig,
                 progress: ProgressCallback | None) -> None:
    with os.fdopen(fd, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            events.append(event)
            if progress and event.get("event") == "step":
                progress(config.label, int(event["step"]), int(event.get("steps", config.steps)))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _death_message(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the run's process was killed by {name}"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"the run's process exited with code {returncode}" + (f": {last[-1]}" if last else "")

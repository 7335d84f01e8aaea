"""The process a run lives in: whether it ended, ending its whole group, and the error of an interrupt.

Shared by the single-process runner (audit/runner.py) and torchrun's launch (audit/launch.py), which both
start their process in a session of its own and must leave nothing behind however the run ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from repro_audit.audit.errors import Interrupted


def has_exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the worker has ended, without reaping it: while its pid stays a zombie it cannot be reused, so
    the killpg that follows can only reach the worker's own group."""
    if process.returncode is not None:
        return True
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    return process.poll() is not None


def end_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the worker's process group (the worker if it still runs, and whatever the recipe forked), then
    reap the worker."""
    if process.stdin is not None and not process.stdin.closed:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
    process.wait()


def interrupted_error(exc: BaseException | None, last_step: int) -> dict[str, Any]:
    if isinstance(exc, Interrupted):
        cause = f" by {exc.signal_name}"
    elif isinstance(exc, KeyboardInterrupt):
        cause = " by Ctrl-C"
    elif exc is not None:
        cause = f" ({type(exc).__name__})"
    else:
        cause = ""
    return {"kind": "interrupted", "type": "Interrupted", "step": last_step + 1, "traceback": "",
            "message": f"repro-audit was interrupted{cause} during step {last_step + 1}; the run was killed"}

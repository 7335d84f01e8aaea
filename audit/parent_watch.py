"""A worker dies with the repro-audit process that started it, even when that one is SIGKILLed.

Nothing can clean up after a SIGKILL, so the worker must notice on its own: on Linux the kernel sends it
SIGKILL when its parent goes (prctl PR_SET_PDEATHSIG); elsewhere, and as a fallback, a daemon thread polls
the parent's pid and kills the worker's process group (its own children too). What the run had recorded is
left in `<trace>.partial/`, where `repro-audit` cannot finalise it; docs/cli.md says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Arrange for this process to end when `parent_pid` is no longer its parent; end now if it already is
    not (the parent died before this ran)."""
    _set_parent_death_signal()
    if os.getppid() != parent_pid:
        _kill_own_group()
    threading.Thread(target=_watch, args=(parent_pid,), name="repro-audit-parent-watch", daemon=True).start()


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watcher thread still ends us, within POLL_S


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    _kill_own_group()


def _kill_own_group() -> None:
    try:
        if os.getpgrp() == os.getpid():  # the runner starts each worker as the leader of its own group
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(137)

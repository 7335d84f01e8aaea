"""Where each rank of a timed-out run waits, from the Python stacks it dumps on SIGUSR1 (faulthandler).

A rank whose main thread waits inside torch (a collective, DDP's reducer) is held up by another rank; the
rank whose innermost frame is the user's code is the one that hung, and that frame is where.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

DUMP_WAIT_S = 1.0
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)')
# torch as installed (not a user's folder that happens to be called torch) and the interpreter's waits.
_LIBRARY = re.compile(r"[/\\](site|dist)-packages[/\\]torch[/\\]|[/\\](threading|selectors)\.py:")


def request_stacks(pids: dict[int, int]) -> None:
    """Ask every rank (rank -> pid) for its stacks, and give them a moment to write."""
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            pass
    time.sleep(DUMP_WAIT_S)


def innermost_frame(stack_file: Path) -> str | None:
    """`file:line in function` of the main thread's innermost frame (the thread that runs repro_audit.audit.worker)."""
    try:
        text = stack_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for block in re.split(r"\n(?=(?:Current thread|Thread) 0x)", text):
        frames = _FRAME.findall(block)
        if frames and any("audit" in file and file.endswith("worker.py") for file, _, _ in frames):
            file, line, function = frames[0]
            return f"{file}:{line} in {function}"
    return None


def in_library(frame: str) -> bool:
    """Whether a frame is torch's (or the interpreter's) rather than the user's code."""
    return _LIBRARY.search(frame) is not None

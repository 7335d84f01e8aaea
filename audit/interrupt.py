"""SIGINT and SIGTERM in the CLI process: raise `Interrupted` once, where the main thread is.

The runner reacts to the exception by killing the workers' process groups and keeping their partial
traces; the CLI group turns it into one line and exit code 130. Only the first signal raises: a second
Ctrl-C while the runs are being stopped must not cut that cleanup short.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from repro_audit.audit.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def handling_interrupts() -> Iterator[None]:
    """Install the handlers for the block and restore the previous ones after; a no-op off the main thread
    (where Python cannot install signal handlers), e.g. when a test invokes the CLI from a worker thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if raised.is_set():
            return
        raised.set()
        raise Interrupted(signal.Signals(signum).name)

    previous: dict[signal.Signals, Any] = {}
    for signum in HANDLED:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # started with the signal ignored (nohup, `&` in a script): it stays ignored
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)

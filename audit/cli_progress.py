"""Progress on stderr while runs go and while the command compares and writes: which run, which step, or
runs done out of how many.

On a terminal each run has a live line of its own (runs go in parallel: one shared line would show them
in turns), and what the command does next (comparing, writing a report) is a transient line, cleared
before anything else prints. Elsewhere (a CI log) runs print a few plain lines each and stages nothing,
so a log stays short and a failure stays the one line after them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

LOG_LINES_PER_RUN = 10  # plain lines one run prints at most in a log, besides its first and last step
_UP, _DOWN, _CLEAR = "\x1b[{}A", "\x1b[{}B", "\x1b[K"


class Progress:
    """Thread-safe: runs report from reader threads at once. As a context manager it ends its live
    lines however the runs end, so an error line never starts in the middle of one."""

    def __init__(self, *, quiet: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self._stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._live = _isatty(self._stream)
        self._rows: dict[str, str] = {}  # run label -> its line, in the order runs first reported
        self._logged: dict[str, int] = {}  # run label -> the tenth of its steps last logged
        self._stage_shown = False

    def update(self, label: str, step: int, steps: int) -> None:
        """Run `label` finished `step` of `steps`."""
        if self.quiet:
            return
        line = f"  {label}: step {step}/{steps}"
        with self._lock:
            if self._live:
                self._show_row(label, line)
            elif self._worth_logging(label, step, steps):
                self._write(line + "\n")

    def run_done(self, done: int, total: int, result: Any) -> None:
        """Runs done / total, for commands that give many runs to an executor at once."""
        if self.quiet:
            return
        how = "" if result.ok else " (failed)"
        how += " (retried once)" if getattr(result, "attempts", 1) > 1 else ""
        line = f"  runs done {done}/{total}: {result.label}{how}"
        with self._lock:
            if self._live:
                self._show_row("runs done", line)
            else:
                self._write(line + "\n")

    @contextlib.contextmanager
    def stage(self, text: str) -> Iterator[None]:
        """What the command does now ("comparing the traces"), shown on a terminal until it is done."""
        if self.quiet or not self._live:
            yield
            return
        with self._lock:
            self._write("\r" + self._fitted(f"  {text}...") + _CLEAR)
            self._stage_shown = True
        try:
            yield
        finally:
            with self._lock:
                self._clear_stage()

    def done(self) -> None:
        with self._lock:
            self._clear_stage()
            self._rows.clear()  # the lines stay on screen; the next ones go below them

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done()

    def _show_row(self, label: str, line: str) -> None:
        """Rewrite the run's own line in place; the cursor stays on the line below all of them."""
        self._clear_stage()
        text = self._fitted(line)
        if label not in self._rows:
            self._rows[label] = text
            self._write(text + _CLEAR + "\n")
            return
        self._rows[label] = text
        up = len(self._rows) - list(self._rows).index(label)
        self._write(_UP.format(up) + "\r" + text + _CLEAR + _DOWN.format(up) + "\r")

    def _worth_logging(self, label: str, step: int, steps: int) -> bool:
        """The first and last step and each tenth of the way: a 1000-step run is a dozen lines of a log."""
        tenth = step * LOG_LINES_PER_RUN // max(steps, 1)
        if step in (1, steps) or tenth != self._logged.get(label):
            self._logged[label] = tenth
            return True
        return False

    def _clear_stage(self) -> None:
        if self._stage_shown:
            self._write("\r" + _CLEAR)
            self._stage_shown = False

    def _fitted(self, line: str) -> str:
        """A live line shorter than the terminal: one that wrapped would break the cursor's arithmetic."""
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        columns = columns if columns >= 20 else 80  # a pseudo-terminal may say 0
        return line if len(line) < columns else line[:columns - 4] + "..."

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False

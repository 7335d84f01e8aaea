"""Progress lines on stderr while runs go: which run, which step; or runs done out of how many."""

from __future__ import annotations

import sys
import threading
from typing import Any

import click


class Progress:
    """Thread-safe: two runs report from two reader threads at once. As a context manager it ends its
    live line however the runs end, so an error line never starts in the middle of it."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()
        self._live = sys.stderr.isatty()
        self._printed = False

    def update(self, label: str, step: int, steps: int) -> None:
        if self.quiet:
            return
        with self._lock:
            line = f"  {label}: step {step}/{steps}"
            if self._live:
                click.echo("\r" + line.ljust(60), err=True, nl=False)
            else:
                click.echo(line, err=True)
            self._printed = True

    def run_done(self, done: int, total: int, result: Any) -> None:
        """Runs done / total, for commands that give many runs to an executor at once."""
        if self.quiet:
            return
        how = "" if result.ok else " (failed)"
        how += " (retried once)" if getattr(result, "attempts", 1) > 1 else ""
        with self._lock:
            line = f"  runs done {done}/{total}: {result.label}{how}"
            if self._live:
                click.echo("\r" + line.ljust(60), err=True, nl=False)
            else:
                click.echo(line, err=True)
            self._printed = True

    def done(self) -> None:
        if self.quiet or not self._printed:
            return
        with self._lock:
            if self._live:
                click.echo("", err=True)
            self._printed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.done()

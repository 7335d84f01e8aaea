"""The error types: what the user can fix, what is our bug, and an interrupt.

The CLI turns a UserError into one line on stderr and exit code 2, an interrupt into one line and 130, and
any other exception (InternalError included) into one line naming the bug and a saved traceback, exit 3:
a crash of the tool must never read as a verdict.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad config, bad trace, failed run, unknown option: one line, exit code 2."""


class ConfigError(UserError):
    """The config file is missing, malformed or names something that does not exist."""


class TraceError(UserError):
    """A trace is missing, corrupt, truncated or written by a newer schema."""


class RunFailed(UserError):
    """A recipe crashed, hung or returned the wrong thing; its partial trace is kept."""

    def __init__(self, message: str, *, trace_path: str | None = None) -> None:
        super().__init__(message)
        self.trace_path = trace_path


class OutputError(UserError):
    """An output (trace folder, --json or --html file) cannot be written where asked, or would destroy
    something that is not ours to replace."""


class FrameworkMissing(UserError):
    """A framework the run needs is not installed; the message carries the install command."""


class InternalError(Exception):
    """A bug in repro-audit itself, never the user's input."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the CLI: stop the runs, keep what is worth keeping, exit 130.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it. `kept`
    names the partial traces left for the user; the CLI fills it where it knows what stays.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.kept: list[str] = []

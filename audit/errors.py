"""The two error types: what the user can fix, and what is our bug.

The CLI turns a UserError into one line on stderr and exit code 2; an InternalError keeps its traceback
because it is ours to fix.
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


class FrameworkMissing(UserError):
    """A framework the run needs is not installed; the message carries the install command."""


class InternalError(Exception):
    """A bug in repro-audit itself, never the user's input."""

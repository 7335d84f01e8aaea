"""How the CLI ends when something goes wrong: one line on stderr and an exit code that says what kind.

Exit codes (README, docs/cli.md): 0 identical or healthy, 1 diverged or flagged, 2 bad input or a run that
failed, 3 a bug in repro-audit (the traceback is saved to a file the line names), 130 interrupted. A crash of
the tool gets its own code so that it never reads as a verdict.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import traceback

import click

from repro_audit.audit.errors import Interrupted, UserError

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MAX_LINE = 1000  # characters of one error line; longer messages keep their start and end
_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]+\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# click >= 8.2 raises this for a bare `repro-audit`; click 8.1 prints the help itself and exits
_NO_ARGS_IS_HELP: type[BaseException] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


def one_line(text: str, *, limit: int = MAX_LINE) -> str:
    """A message as one terminal line: line breaks become spaces, other control characters too (a recipe's
    exception text may hold anything), and a very long message keeps its head and its tail."""
    line = _CONTROL.sub(" ", _BREAKS.sub(" ", str(text))).strip()
    if len(line) > limit:
        tail = limit // 4
        line = f"{line[:limit - tail - 5]} ... {line[-tail:]}"
    return line


def report_failure(exc: BaseException) -> int:
    """Print the one line for `exc` and return the exit code; re-raise what is not ours to report."""
    if isinstance(exc, Interrupted):
        kept = f"; partial traces kept in {', '.join(exc.kept)}" if exc.kept else ""
        return _say(f"interrupted by {exc.signal_name}{kept}", EXIT_INTERRUPTED)
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, click.exceptions.Abort)
                                              and isinstance(exc.__cause__, KeyboardInterrupt)):
        return _say("interrupted", EXIT_INTERRUPTED)
    if isinstance(exc, click.exceptions.Abort):
        return _say("aborted", EXIT_TROUBLE)
    if isinstance(exc, _NO_ARGS_IS_HELP) and isinstance(exc, click.ClickException):
        click.echo(exc.format_message(), err=True)  # the group's help, as click prints it
        return EXIT_TROUBLE
    if isinstance(exc, click.ClickException):
        return _say(exc.format_message(), EXIT_TROUBLE)
    if isinstance(exc, UserError):
        return _say(f"error: {exc}", EXIT_TROUBLE)
    if isinstance(exc, Exception):
        saved = _save_traceback(exc)
        return _say(f"internal error (a bug in repro-audit, not a verdict): {type(exc).__name__}: {exc}; "
                    f"{saved}", EXIT_INTERNAL)
    raise exc


def _say(message: str, code: int) -> int:
    click.echo(f"repro-audit: {one_line(message)}", err=True)
    return code


def _save_traceback(exc: BaseException) -> str:
    """The traceback in a new file of the system temporary folder (mkstemp: never through a planted link)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        handle, path = tempfile.mkstemp(prefix=f"repro-audit-crash-{os.getpid()}-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(f"repro-audit {' '.join(sys.argv[1:])}\n\n{text}")
    except OSError as error:
        return f"the traceback could not be saved ({error.strerror or error})"
    return f"traceback saved to {path}"

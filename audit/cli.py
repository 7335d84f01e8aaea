"""The `repro-audit` command line: record, diff, compare, check, health, noise, bisect.

Exit codes follow diff(1): 0 identical (or healthy), 1 diverged (or flagged), 2 bad input or a failed run;
3 is a bug in repro-audit and 130 an interrupt (audit/cli_errors.py). Every failure is one line on stderr.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from repro_audit.audit.cli_errors import (
    EXIT_DIFFERENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_SAME,
    EXIT_TROUBLE,
    report_failure,
)
from repro_audit.audit.cli_help import SectionedCommand
from repro_audit.audit.interrupt import handling_interrupts

__all__ = ["EXIT_DIFFERENT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_SAME", "EXIT_TROUBLE", "cli", "main"]


class AuditGroup(click.Group):
    """Maps results and every error to exit codes itself; SIGINT and SIGTERM stop the runs (exit 130). Its
    commands list their options in sections (audit/cli_help.py)."""

    command_class = SectionedCommand

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # we map results and errors to exit codes ourselves
        with handling_interrupts():
            try:
                result = super().main(*args, **kwargs)
                code = result if isinstance(result, int) else 0
            except click.exceptions.Exit as exc:
                code = exc.exit_code
            except SystemExit:
                raise
            except BaseException as exc:
                code = report_failure(exc)
        sys.exit(code)


@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="repro-audit")
def cli() -> None:
    """Record training runs, compare them, and explain where and why they first diverge."""


def main() -> None:
    cli()


# Imported for their side effect: each registers its commands on `cli`.
from repro_audit.audit import (  # noqa: F401,E402
    cli_bisect,
    cli_commands,
    cli_compare,
    cli_env,
    cli_health,
    cli_noise,
    cli_ops,
    cli_verify,
)

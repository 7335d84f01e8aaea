"""The `repro-audit` command line: record, diff, compare, check, health.

Every user-facing problem is one line on stderr and exit code 2; exit codes otherwise follow diff(1):
0 identical (or healthy), 1 diverged (or flagged).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from audit.errors import UserError

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2


class AuditGroup(click.Group):
    """Turns our user errors and click's usage errors into one line and exit code 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # we map results and errors to exit codes ourselves
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("repro-audit: aborted", err=True)
            sys.exit(EXIT_TROUBLE)
        except click.ClickException as exc:
            click.echo(f"repro-audit: {exc.format_message()}", err=True)
            sys.exit(EXIT_TROUBLE)
        except UserError as exc:
            click.echo(f"repro-audit: error: {exc}", err=True)
            sys.exit(EXIT_TROUBLE)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="repro-audit")
def cli() -> None:
    """Record training runs, compare them, and explain where and why they first diverge."""


def main() -> None:
    cli()


from audit import cli_commands, cli_compare, cli_health  # noqa: E402,F401  (registers the commands on `cli`)

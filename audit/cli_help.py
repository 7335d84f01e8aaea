"""`--help` in sections: a command's own options first, then options that tune one part of it (the eight
health thresholds) under their own heading, after `--json`, `--html` and the rest."""

from __future__ import annotations

from typing import Any

import click

OPTIONS = "Options"
COLUMN_MAX = 30  # click's default: a longer option name has its help on the next line


class SectionedOption(click.Option):
    """An option listed under `section` in `--help` instead of with the command's own options."""

    def __init__(self, *args: Any, section: str = OPTIONS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class SectionedCommand(click.Command):
    """Lists its options by section: the plain ones first, in the order they were declared, then each
    other section in the order its first option appears."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {OPTIONS: []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and isinstance(param, click.Option):  # arguments are in the usage line
                sections.setdefault(getattr(param, "section", OPTIONS), []).append(record)
        # One column for the help texts of every section: click sizes it per list, up to COLUMN_MAX.
        column = min(max((len(name) for records in sections.values() for name, _ in records), default=0), COLUMN_MAX)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl([(name.ljust(column), text) for name, text in records], col_max=COLUMN_MAX)

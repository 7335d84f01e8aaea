"""Where the text report goes to a terminal: in colour (unless NO_COLOR or --no-color) and wrapped to its
width; piped, plain and 100 columns wide, so a file or a CI log reads the same on every machine."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import click

from repro_audit.reports.text_layout import DEFAULT_WIDTH


def color_option(function: Any) -> Any:
    return click.option("--color/--no-color", "color", default=None,
                        help="Colour the text report. Default: on a terminal, unless NO_COLOR is set.")(function)


def use_color(choice: bool | None) -> bool:
    """--color or --no-color as given; else colour on a terminal, unless NO_COLOR (no-color.org: set and not
    empty) or TERM=dumb says otherwise."""
    if choice is not None:
        return choice
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _stdout_is_a_terminal()


def report_width() -> int:
    """The terminal's columns when stdout is one, else DEFAULT_WIDTH."""
    if not _stdout_is_a_terminal():
        return DEFAULT_WIDTH
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def echo_report(text: str, *, color: bool) -> None:
    """The report on stdout; click keeps its colour only when told to (it strips ANSI off a pipe)."""
    click.echo(text, color=color)


def _stdout_is_a_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (ValueError, AttributeError):
        return False

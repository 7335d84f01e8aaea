"""The health rules' thresholds as command-line options, shared by `health`, `diff`, `compare` and `check`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import click

from repro_audit.audit.cli_help import SectionedOption
from repro_audit.audit.health import Thresholds

DEFAULTS = Thresholds()
SECTION = "Health thresholds"  # their heading in --help, after the command's own options

# The health rules' thresholds as options: (flag, type, help), defaults from Thresholds.
THRESHOLD_OPTIONS: list[tuple[str, Any, str]] = [
    ("--max-grad-norm", float, "Exploding: a layer's finite gradient norm above this."),
    ("--min-grad-norm", float, "Vanishing: a layer's gradient norm below this..."),
    ("--min-grad-ratio", float, "...or below this fraction of the largest layer's gradient norm in the same step."),
    ("--saturation", click.FloatRange(0, 1), "Share of a tanh/sigmoid output that is saturated."),
    ("--dead-units", click.FloatRange(0, 1), "Share of a ReLU-like output's units never positive in the batch."),
    ("--initial-loss-tolerance", click.FloatRange(min=0), "Step-1 loss off -log(1/C) by more than this fraction of it."),
    ("--memory-growth-mb", click.FloatRange(min=0), "Growth (MiB) that memory must show at every step from step 2 on."),
    ("--memory-min-steps", click.IntRange(min=1), "Growths in a row, from step 2 on, before memory counts as growing."),
]


def health_threshold_options(function: Any) -> Any:
    """The thresholds as options, shared by `health`, `diff`, `compare` and `check` (their health verdicts)."""
    for flag, kind, text in reversed(THRESHOLD_OPTIONS):
        default = getattr(DEFAULTS, flag[2:].replace("-", "_"))
        function = click.option(flag, type=kind, default=default, show_default=True, help=text,
                                cls=SectionedOption, section=SECTION)(function)
    return function


def thresholds_from(options: dict[str, Any]) -> Thresholds:
    """The Thresholds the options ask for (their defaults are Thresholds' own)."""
    return Thresholds(**{field.name: options[field.name] for field in fields(Thresholds)})

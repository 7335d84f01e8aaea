"""The commands of `repro-audit`; each parses options, calls the library, and returns an exit code."""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli import cli
from audit.cli_progress import Progress
from audit.config import load_config
from audit.errors import Interrupted, RunFailed
from audit.outputs import check_trace_destination
from audit.runner import record as record_config


@cli.command("record")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(), help="Trace folder to write.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config field.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps (overrides the config).")
@click.option("--values", type=click.Choice(["none", "first", "all"]), help="Keep tensor values.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def record_command(config_path: str, output: str, overrides: tuple[str, ...], steps: int | None,
                   values: str | None, quiet: bool) -> int:
    """Run CONFIG in a fresh subprocess and write its trace.

    \b
    Example:
      repro-audit record fixtures/configs/torch/baseline.yaml -o baseline.trace --steps 3
    """
    config = load_config(config_path, overrides=overrides, steps=steps, values=values)
    target = check_trace_destination(output, option="-o", protected=[Path(config_path)])
    try:
        with Progress(quiet=quiet) as progress:
            result = record_config(config, target, progress=progress.update)
    except Interrupted as exc:
        exc.kept = [str(target)] if target.exists() else []
        raise
    if not result.ok:
        raise RunFailed(result.failure_line(), trace_path=str(result.trace_path) if result.trace_path else None)
    from audit.trace import Trace

    trace = Trace(target)
    if not quiet:
        from reports.trace_summary import render_trace_summary

        click.echo(render_trace_summary(trace))
    return 0


@cli.command("show")
@click.argument("trace_path", metavar="TRACE", type=click.Path())
def show_command(trace_path: str) -> int:
    """Summarise one recorded trace: steps, loss terms, and where NaN entered the gradients.

    \b
    Example:
      repro-audit show baseline.trace
    """
    from audit.trace import Trace
    from reports.trace_summary import render_trace_summary

    click.echo(render_trace_summary(Trace(trace_path)))
    return 0

"""The commands of `repro-audit`; each parses options, calls the library, and returns an exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from repro_audit.audit.cli import cli
from repro_audit.audit.cli_progress import Progress
from repro_audit.audit.config import load_config
from repro_audit.audit.errors import Interrupted, RunFailed
from repro_audit.audit.outputs import check_trace_destination
from repro_audit.audit.runner import record as record_config


@cli.command("record")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(), help="Trace folder to write.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config field.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps (overrides the config).")
@click.option("--values", type=click.Choice(["none", "first", "all"]), help="Keep tensor values.")
@click.option("--python", "python", type=click.Path(exists=True, dir_okay=False),
              help="Run with this Python interpreter (another virtual environment).")
@click.option("--nproc", type=click.IntRange(min=1, max=64),
              help="Run N ranks under torchrun (DDP); -o is then a folder with a trace per rank.")
@click.option("--zoom/--no-zoom", default=True, show_default=True,
              help="With launch/--nproc: where the ranks drift apart, re-run to the drift step and name the op "
                   "before the drift in the summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def record_command(config_path: str, output: str, overrides: tuple[str, ...], steps: int | None,
                   values: str | None, python: str | None, nproc: int | None, zoom: bool, quiet: bool) -> int:
    """Run CONFIG in a fresh subprocess and write its trace.

    \b
    Example:
      repro-audit record fixtures/configs/torch/baseline.yaml -o baseline.trace --steps 3
    """
    from repro_audit.audit.cli_compare import interpreter

    config = load_config(config_path, overrides=overrides, steps=steps, values=values, nproc=nproc)
    config.python = interpreter(python)
    target = check_trace_destination(output, option="-o", protected=[Path(config_path)])
    try:
        with Progress(quiet=quiet) as progress:
            result = record_config(config, target, progress=progress.update)
    except Interrupted as exc:
        exc.kept = [str(target)] if target.exists() else []
        raise
    if not result.ok:
        raise RunFailed(result.failure_line(), trace_path=str(result.trace_path) if result.trace_path else None)
    if config.nproc:
        if not quiet:
            from repro_audit.audit.cli_ranks import summarise_ranked_run

            summarise_ranked_run(target, label=config.label, zoom=config if zoom else None, quiet=quiet)
        return 0
    from repro_audit.audit.trace import Trace

    trace = Trace(target)
    warn_local_changes(trace)
    if not quiet:
        from repro_audit.reports.trace_summary import render_trace_summary

        click.echo(render_trace_summary(trace))
    return 0


@cli.command("show")
@click.argument("trace_path", metavar="TRACE", type=click.Path())
def show_command(trace_path: str) -> int:
    """Summarise one recorded trace: steps, loss terms, and where NaN entered the gradients; for a run of
    several ranks, each rank's steps and the checks across its ranks.

    \b
    Example:
      repro-audit show baseline.trace
    """
    from repro_audit.audit.trace import Trace
    from repro_audit.audit.trace.ranks import is_ranked_run
    from repro_audit.reports.trace_summary import render_trace_summary

    if is_ranked_run(Path(trace_path)):  # a run of N ranks: each rank's length and the cross-rank checks
        from repro_audit.audit.cli_ranks import summarise_ranked_run
        from repro_audit.audit.trace.ranks import read_ranks_file

        label = str(read_ranks_file(Path(trace_path)).get("label") or Path(trace_path).stem)
        summarise_ranked_run(Path(trace_path), label=label)
        return 0
    trace = Trace(trace_path)
    warn_local_changes(trace)
    click.echo(render_trace_summary(trace))
    return 0


def warn_local_changes(trace: Any) -> None:
    """One line on stderr per installed package the run used with local changes: they are easy to forget
    and change results without a version change (the seed's real cause)."""
    for name, info in (trace.environment.get("local_changes") or {}).items():
        files = info.get("modified") or []
        if files:
            shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
            click.echo(f"warning: package {name} {info.get('version')} has {len(files)} file"
                       f"{'s' if len(files) != 1 else ''} that differ from what was installed (local changes): "
                       f"{shown}", err=True)

"""`diff`, `compare` and `check`: record (or open) traces, compare them, present the verdict."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from audit.cli import EXIT_DIFFERENT, EXIT_SAME, EXIT_TROUBLE, cli
from audit.cli_progress import Progress
from audit.cli_thresholds import health_threshold_options, thresholds_from
from audit.config import RunConfig, load_config
from audit.divergence import CATEGORIES, Comparison
from audit.errors import RunFailed
from audit.runner import raise_for_failures, record_all
from audit.trace import Trace

CATEGORY_NAMES = tuple(category for category in CATEGORIES if category != "health")  # health: `repro-audit health`


def _tolerance_options(function: Any) -> Any:
    function = click.option("--rtol", type=float, default=0.0, show_default=True, help="Relative tolerance.")(function)
    function = click.option("--atol", type=float, default=0.0, show_default=True, help="Absolute tolerance.")(function)
    function = click.option("--ignore", multiple=True, type=click.Choice(CATEGORY_NAMES),
                            help="Category to leave out of the comparison.")(function)
    function = click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the JSON result.")(function)
    function = click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write the HTML report.")(function)
    function = click.option("-q", "--quiet", is_flag=True, help="No progress, only the verdict.")(function)
    return health_threshold_options(function)


@cli.command("diff")
@click.argument("config_a", type=click.Path(dir_okay=False))
@click.argument("config_b", required=False, type=click.Path(dir_okay=False))
@click.option("--set-a", "set_a", multiple=True, metavar="K=V", help="Override a field of config A.")
@click.option("--set-b", "set_b", multiple=True, metavar="K=V", help="Override a field of config B.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps for both runs.")
@click.option("--values", type=click.Choice(["none", "first", "all"]), help="Keep tensor values.")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep both traces in this folder.")
@_tolerance_options
def diff_command(config_a: str, config_b: str | None, set_a: tuple[str, ...], set_b: tuple[str, ...],
                 steps: int | None, values: str | None, keep: str | None, **options: Any) -> int:
    """Run two configs in separate processes and explain where they first diverge.

    \b
    Examples:
      repro-audit diff fixtures/configs/torch/baseline.yaml fixtures/configs/torch/zero_entropy_loss.yaml --html r.html
      repro-audit diff fixtures/configs/torch/baseline.yaml --set-b seed=2
    """
    if config_b is None and not set_b:
        raise click.UsageError("give CONFIG_B, or --set-b to compare CONFIG_A against itself with an override")
    first = load_config(config_a, overrides=set_a, steps=steps, values=values)
    second = load_config(config_b or config_a, overrides=set_b, steps=steps, values=values)
    if first.label == second.label:
        first.label, second.label = f"{first.label} (A)", f"{second.label} (B)"
    with _run_folder(keep) as folder:
        traces = _record([first, second], folder=folder, quiet=options["quiet"])
        return _compare_and_report(traces[0], traces[1], **options)


@cli.command("compare")
@click.argument("trace_a", type=click.Path())
@click.argument("trace_b", type=click.Path())
@_tolerance_options
def compare_command(trace_a: str, trace_b: str, **options: Any) -> int:
    """Compare two stored traces (recorded elsewhere, on another machine or version).

    \b
    Example:
      repro-audit compare runs/a.trace runs/b.trace --json result.json
    """
    return _compare_and_report(Trace(trace_a), Trace(trace_b), **options)


@cli.command("check")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--runs", type=click.IntRange(min=2), default=2, show_default=True, help="How many runs.")
@click.option("--set", "overrides", multiple=True, metavar="K=V", help="Override a config field.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps.")
@click.option("--values", type=click.Choice(["none", "first", "all"]), help="Keep tensor values.")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the traces in this folder.")
@_tolerance_options
def check_command(config_path: str, runs: int, overrides: tuple[str, ...], steps: int | None, values: str | None,
                  keep: str | None, **options: Any) -> int:
    """Run one config N times and report run-to-run nondeterminism.

    \b
    Example:
      repro-audit check fixtures/configs/torch/baseline.yaml --runs 3
    """
    configs = []
    for index in range(1, runs + 1):
        config = load_config(config_path, overrides=overrides, steps=steps, values=values)
        config.label = f"{config.label} run {index}"
        configs.append(config)
    with _run_folder(keep) as folder:
        traces = _record(configs, folder=folder, quiet=options["quiet"])
        return _check_and_report(traces, configs[0].label.rsplit(" run ", 1)[0], options)


def _check_and_report(traces: list[Trace], name: str, options: dict[str, Any]) -> int:
    from audit.diff import compare_check
    from reports.text import render_text

    runs = len(traces)
    comparisons = compare_check(traces, rtol=options["rtol"], atol=options["atol"], ignore=tuple(options["ignore"]),
                                health_thresholds=thresholds_from(options))
    diverged = [c for c in comparisons if not c.identical]
    if diverged:
        click.echo(render_text(diverged[0]))
        others = ", ".join(c.run_b.label for c in diverged)
        click.echo(f"\nruns that differ from run 1: {others}")
    else:
        how = "bitwise" if not options["rtol"] and not options["atol"] else \
            f"within rtol={options['rtol']}, atol={options['atol']}"
        click.echo(f"IDENTICAL: {runs} runs of {name!r} match {how} "
                   f"({comparisons[0].run_a.steps_recorded} steps each)")
    _write_outputs(diverged[0] if diverged else comparisons[0], traces[0], traces[-1], options, check=comparisons)
    return EXIT_DIFFERENT if diverged else EXIT_SAME


@contextlib.contextmanager
def _run_folder(keep: str | None) -> Iterator[Path]:
    """Where the traces go: the --keep folder, or a temporary one removed once the report is written.

    A run that fails leaves its partial trace (and the other runs' traces) in place, and the error says where.
    """
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="repro-audit-runs-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except RunFailed:
        raise
    except BaseException:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)


def _record(configs: Sequence[RunConfig], *, folder: Path, quiet: bool) -> list[Trace]:
    jobs = [(config, folder / f"{index}-{_slug(config.label)}.trace") for index, config in enumerate(configs, 1)]
    progress = Progress(quiet=quiet)
    results = record_all(jobs, progress=progress.update)
    progress.done()
    raise_for_failures(results)
    return [Trace(path) for _, path in jobs]


def _compare_and_report(trace_a: Trace, trace_b: Trace, **options: Any) -> int:
    from audit.diff import compare_traces
    from reports.text import render_text

    comparison = compare_traces(trace_a, trace_b, rtol=options["rtol"], atol=options["atol"],
                                ignore=tuple(options["ignore"]), health_thresholds=thresholds_from(options))
    click.echo(render_text(comparison))
    _write_outputs(comparison, trace_a, trace_b, options)
    if comparison.identical and comparison.partial:
        return EXIT_TROUBLE  # a run stopped early: "identical so far" is not "identical"
    return EXIT_SAME if comparison.identical else EXIT_DIFFERENT


def _write_outputs(comparison: Comparison, trace_a: Trace, trace_b: Trace, options: dict[str, Any],
                   check: Sequence[Comparison] | None = None) -> None:
    if options.get("json_path"):
        from reports.json_report import render_json

        Path(options["json_path"]).write_text(render_json(comparison), encoding="utf-8")
    if options.get("html_path"):
        from reports.html import write_html

        write_html(options["html_path"], comparison, trace_a=trace_a, trace_b=trace_b, check=check)
        if not options.get("quiet"):
            click.echo(f"HTML report: {options['html_path']}")


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)[:60]

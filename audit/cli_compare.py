"""`diff`, `compare` and `check`: record (or open) traces, compare them, present the verdict."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from repro_audit.audit.cli import EXIT_DIFFERENT, EXIT_SAME, EXIT_TROUBLE, cli
from repro_audit.audit.cli_executor import noise_options
from repro_audit.audit.cli_progress import Progress
from repro_audit.audit.cli_terminal import color_option, echo_report, report_width, use_color
from repro_audit.audit.cli_thresholds import health_threshold_options, thresholds_from
from repro_audit.audit.config import RunConfig, load_config
from repro_audit.audit.divergence import CATEGORIES, Comparison
from repro_audit.audit.errors import Interrupted, OutputError, RunFailed, UserError
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.noise.stats import DEFAULT_ALPHA
from repro_audit.audit.outputs import (
    ReportTarget,
    check_keep_folder,
    check_report_targets,
    check_trace_destination,
    trace_file_name,
    write_report,
)
from repro_audit.audit.runner import raise_for_failures
from repro_audit.audit.trace import Trace

if TYPE_CHECKING:
    from repro_audit.audit.cli_verify import Annotate

# `--ignore health` leaves the runs' health out of the report, as `ignore=("health",)` does in the plugin.
CATEGORY_NAMES = CATEGORIES


def _tolerance(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Checked before any run: a NaN or negative tolerance would only be refused after both runs."""
    if math.isnan(value) or value < 0:
        raise click.BadParameter(f"tolerances must be >= 0, got {value}")
    return value


def _zoom_option(function: Any) -> Any:
    return click.option("--zoom/--no-zoom", default=True, show_default=True,
                        help="Where the first divergence is inside a step (torch): re-run both sides to it with "
                             "the diverging module hashed op by op, and name the first op that differs; where "
                             "the ranks of a launch/--nproc run drift apart, re-run it to the drift step and "
                             "name the op before the drift.")(function)


def _tolerance_options(function: Any) -> Any:
    """The options `diff`, `compare`, `check` and `verify` share, listed in --help in this order (click lists
    the option added last first), the health thresholds under their own heading after them."""
    shared: list[Callable[[Any], Any]] = [
        click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
                     help="Write the JSON result ('-': to stdout, instead of the text report)."),
        click.option("--html", "html_path", type=click.Path(dir_okay=False, allow_dash=True),
                     help="Write the HTML report ('-': to stdout)."),
        click.option("--rtol", type=float, default=0.0, show_default=True, callback=_tolerance,
                     help="Relative tolerance."),
        click.option("--atol", type=float, default=0.0, show_default=True, callback=_tolerance,
                     help="Absolute tolerance."),
        click.option("--ignore", multiple=True, type=click.Choice(CATEGORY_NAMES), metavar="CATEGORY",
                     help=f"Leave a category out of the comparison (repeatable): {', '.join(CATEGORY_NAMES)}."),
        color_option,
        click.option("-q", "--quiet", is_flag=True, help="No progress, only the verdict."),
    ]
    for option in reversed(shared):
        function = option(function)
    return health_threshold_options(function)


@cli.command("diff")
@click.argument("config_a", type=click.Path(dir_okay=False))
@click.argument("config_b", required=False, type=click.Path(dir_okay=False))
@click.option("--set-a", "set_a", multiple=True, metavar="K=V", help="Override a field of config A.")
@click.option("--set-b", "set_b", multiple=True, metavar="K=V", help="Override a field of config B.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps for both runs.")
@click.option("--values", type=click.Choice(["none", "first", "all"]), help="Keep tensor values.")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep both traces in this folder.")
@click.option("--python-a", "python_a", type=click.Path(exists=True, dir_okay=False),
              help="Run A with this Python interpreter (another virtual environment).")
@click.option("--python-b", "python_b", type=click.Path(exists=True, dir_okay=False),
              help="Run B with this Python interpreter (another virtual environment).")
@click.option("--ref-a", "ref_a", metavar="REV", help="Run A's config as it is at this git commit.")
@click.option("--ref-b", "ref_b", metavar="REV", help="Run B's config as it is at this git commit.")
@click.option("--verify", is_flag=True,
              help="Prove each named mechanism: re-run B with it neutralised and report the effect (keeps values).")
@_zoom_option
@click.option("--seeds", type=click.IntRange(min=2),
              help="Run each config with this many seeds and test B's curves against A's seed-to-seed spread.")
@noise_options
@click.option("--nproc", type=click.IntRange(min=1, max=64),
              help="Run both configs with N ranks under torchrun (DDP) and compare them rank by rank.")
@_tolerance_options
def diff_command(config_a: str, config_b: str | None, set_a: tuple[str, ...], set_b: tuple[str, ...],
                 steps: int | None, values: str | None, keep: str | None, python_a: str | None,
                 python_b: str | None, ref_a: str | None, ref_b: str | None, verify: bool, seeds: int | None,
                 nproc: int | None,
                 **options: Any) -> int:
    """Run two configs in separate processes and explain where they first diverge.

    \b
    Examples:
      repro-audit diff fixtures/configs/torch/baseline.yaml fixtures/configs/torch/zero_entropy_loss.yaml --html r.html
      repro-audit diff fixtures/configs/torch/baseline.yaml --set-b seed=2
    """
    if config_b is None and not set_b:
        raise click.UsageError("give CONFIG_B, or --set-b to compare CONFIG_A against itself with an override")
    if seeds is None:
        _refuse_noise_options(options)
    elif verify or values or options["rtol"] or options["atol"] or options["ignore"]:
        raise click.UsageError("--seeds compares seed-to-seed bands: --verify, --values, --rtol, --atol and --ignore "
                               "do not apply")
    if verify:
        from repro_audit.audit.cli_verify import verified_values

        values = verified_values(values)
    with contextlib.ExitStack() as checkouts:
        paths = [_at_commit(checkouts, path, ref) for path, ref in ((config_a, ref_a), (config_b or config_a, ref_b))]
        first = load_config(paths[0], overrides=set_a, steps=steps, values=values, nproc=nproc)
        second = load_config(paths[1], overrides=set_b, steps=steps, values=values, nproc=nproc)
        for config, ref in ((first, ref_a), (second, ref_b)):
            config.label += f"@{ref}" if ref else ""
        if first.label == second.label:
            first.label, second.label = f"{first.label} (A)", f"{second.label} (B)"
        first.python, second.python = interpreter(python_a), interpreter(python_b)
        if seeds is not None:
            if first.nproc or second.nproc:
                raise UserError("--seeds runs single processes: it does not take launch/--nproc configs yet")
            from repro_audit.audit.cli_noise import noise_diff

            return noise_diff([first, second], [Path(config_a), Path(config_b or config_a)], seeds=seeds,
                              steps=None, options={**options, "keep": keep})
        return _diff([first, second], [Path(config_a), Path(config_b or config_a)], keep, verify, options)


def _refuse_noise_options(options: dict[str, Any]) -> None:
    """--vary, --alpha and the executor options shape the runs of --seeds only; alone they would do nothing."""
    given = [name for name, default in (("vary", "init"), ("alpha", DEFAULT_ALPHA), ("executor", "local"),
                                        ("address", None), ("workers", None)) if options.get(name) != default]
    if given:
        raise click.UsageError(f"--{given[0]} needs --seeds")


def _at_commit(checkouts: contextlib.ExitStack, config: str, ref: str | None) -> str:
    """The config's path, or its path in a temporary worktree at `ref` that lives as long as `checkouts`."""
    if ref is None:
        return config
    from repro_audit.audit.git_checkout import config_at

    return str(checkouts.enter_context(config_at(config, ref)))


def _diff(configs: list[RunConfig], inputs: list[Path], keep: str | None, verify: bool,
          options: dict[str, Any]) -> int:
    second = configs[1]
    reports = _checked_outputs(configs, keep, inputs, options)
    if any(config.nproc for config in configs):
        if verify:
            raise UserError("--verify is not available for runs with launch/--nproc yet")
        return _ranked(configs, keep, reports, options, name=f"{configs[0].label} vs {second.label}")
    with _run_folder(keep) as folder:
        traces = _record(configs, folder=folder, kept=keep is not None, quiet=options["quiet"])
        proof = None
        if verify:
            from repro_audit.audit.cli_verify import verification_step

            proof = verification_step(second, folder, quiet=options["quiet"])
        zoom = options.pop("zoom")
        annotate = _with_zoom(proof, (configs[0], second), folder, quiet=options["quiet"]) if zoom else proof
        return _compare_and_report(traces[0], traces[1], reports, annotate=annotate,
                                   temporary=None if keep is not None else folder, **options)


def _with_zoom(then: Annotate | None, configs: tuple[RunConfig, RunConfig], folder: Path, *,
               quiet: bool) -> Annotate:
    """An annotation that zooms into the first diverging step (audit/ops/zoom.py), then runs `then`."""
    def annotate(comparison: Comparison, trace_a: Trace, trace_b: Trace) -> None:
        _zoom(comparison, configs, folder, trace_a, quiet=quiet)
        if then is not None:
            then(comparison, trace_a, trace_b)
    return annotate


def _zoom(comparison: Comparison, configs: tuple[RunConfig, RunConfig], folder: Path, trace_a: Trace, *,
          quiet: bool) -> None:
    if comparison.identical:
        return
    from repro_audit.audit.ops.zoom import zoom_in

    order = [str(module.get("path")) for module in trace_a.structure.get("modules") or []]
    with Progress(quiet=quiet) as progress:
        comparison.zoom = zoom_in(comparison, configs, folder=folder / "zoom", module_order=order,
                                  progress=progress.update)


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
    from repro_audit.audit.trace.ranks import is_ranked_run, open_ranks

    reports = check_report_targets(_report_requests(options), protected=[Path(trace_a), Path(trace_b)])
    if is_ranked_run(Path(trace_a)) and is_ranked_run(Path(trace_b)):  # two runs of N ranks: rank by rank
        from repro_audit.audit.cli_ranks import report_ranked

        runs = [open_ranks(trace_a), open_ranks(trace_b)]
        labels = [runs[0][0].label, runs[1][0].label]
        return report_ranked(runs, labels=labels, name=f"{labels[0]} vs {labels[1]}", reports=reports,
                             options=options, temporary=None)
    traces = Trace(trace_a), Trace(trace_b)
    return _compare_and_report(*traces, reports, **options)


@cli.command("check")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--runs", type=click.IntRange(min=2), default=2, show_default=True, help="How many runs.")
@click.option("--set", "overrides", multiple=True, metavar="K=V", help="Override a config field.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps.")
@click.option("--values", type=click.Choice(["none", "first", "all"]), help="Keep tensor values.")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the traces in this folder.")
@_zoom_option
@click.option("--nproc", type=click.IntRange(min=1, max=64),
              help="Run N ranks under torchrun (DDP): check the ranks of each run and the runs rank by rank.")
@_tolerance_options
def check_command(config_path: str, runs: int, overrides: tuple[str, ...], steps: int | None, values: str | None,
                  keep: str | None, nproc: int | None, **options: Any) -> int:
    """Run one config N times and report run-to-run nondeterminism.

    \b
    Example:
      repro-audit check fixtures/configs/torch/baseline.yaml --runs 3
    """
    configs = []
    for index in range(1, runs + 1):
        config = load_config(config_path, overrides=overrides, steps=steps, values=values, nproc=nproc)
        config.label = f"{config.label} run {index}"
        configs.append(config)
    reports = _checked_outputs(configs, keep, [Path(config_path)], options)
    if configs[0].nproc:
        return _ranked(configs, keep, reports, options, name=configs[0].label.rsplit(" run ", 1)[0])
    with _run_folder(keep) as folder:
        traces = _record(configs, folder=folder, kept=keep is not None, quiet=options["quiet"])
        from repro_audit.audit.cli_commands import warn_local_changes

        warn_local_changes(traces[0])
        return _check_and_report(traces, configs[0].label.rsplit(" run ", 1)[0], reports, options,
                                 temporary=None if keep is not None else folder, configs=configs, folder=folder)


def _check_and_report(traces: list[Trace], name: str, reports: list[ReportTarget],
                      options: dict[str, Any], *, temporary: Path | None = None,
                      configs: Sequence[RunConfig] = (), folder: Path | None = None) -> int:
    from repro_audit.audit.diff import compare_check
    from repro_audit.reports.text import render_text
    from repro_audit.reports.text_layout import wrap, wrap_styled

    runs = len(traces)
    others = "run 2" if runs == 2 else f"runs 2-{runs}"
    with Progress(quiet=options["quiet"]) as progress, progress.stage(f"comparing run 1 with {others}"):
        comparisons = compare_check(traces, rtol=options["rtol"], atol=options["atol"],
                                    ignore=tuple(options["ignore"]), health_thresholds=thresholds_from(options))
    for comparison in comparisons:
        forget_trace_paths(comparison, temporary)
    diverged = [c for c in comparisons if not c.identical]
    if diverged and options.get("zoom") and configs and folder is not None:
        other = configs[comparisons.index(diverged[0]) + 1]
        _zoom(diverged[0], (configs[0], other), folder, traces[0], quiet=options["quiet"])
    color, width = use_color(options["color"]), report_width()
    if diverged and _stdout_is_free(reports):
        differing = ", ".join(c.run_b.label for c in diverged)
        text = render_text(diverged[0], color=color, width=width)
        echo_report("\n".join([text, ""] + wrap(f"runs that differ from run 1: {differing}", width, hang="  ")),
                    color=color)
    elif _stdout_is_free(reports):
        how = "bitwise" if not options["rtol"] and not options["atol"] else \
            f"within rtol={options['rtol']}, atol={options['atol']}"
        echo_report("\n".join(wrap_styled("IDENTICAL", f": {runs} runs of {name!r} match {how} "
                                         f"({comparisons[0].run_a.steps_recorded} steps each)", width,
                                         name="green", color=color)), color=color)
    _write_outputs(diverged[0] if diverged else comparisons[0], traces[0], traces[-1], reports, options,
                   check=comparisons)
    return EXIT_DIFFERENT if diverged else EXIT_SAME


def _ranked(configs: list[RunConfig], keep: str | None, reports: list[ReportTarget], options: dict[str, Any], *,
            name: str) -> int:
    """Runs of N ranks (audit/cli_ranks.py): each run's ranks against each other, the runs rank by rank."""
    from repro_audit.audit.cli_ranks import record_ranked, report_ranked

    with _run_folder(keep) as folder:
        runs = record_ranked(configs, folder=folder, kept=keep is not None, quiet=options["quiet"])
        return report_ranked(runs, labels=[config.label for config in configs], name=name, reports=reports,
                             options=options, temporary=None if keep is not None else folder, configs=configs,
                             folder=folder)


def _report_requests(options: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [("--json", options.get("json_path")), ("--html", options.get("html_path"))]


def _checked_outputs(configs: Sequence[RunConfig], keep: str | None, inputs: Sequence[Path],
                     options: dict[str, Any]) -> list[ReportTarget]:
    """Refuse a bad --keep, --json or --html before any run starts; the traces a --keep folder will hold are
    inputs of the reports, never overwritten by them."""
    protected = list(inputs)
    if keep is not None:
        folder = check_keep_folder(keep)
        for path in _trace_paths(configs, folder):
            protected.append(check_trace_destination(path, option="--keep", protected=inputs))
    return check_report_targets(_report_requests(options), protected=protected)


def _stdout_is_free(reports: Sequence[ReportTarget]) -> bool:
    """Whether the text report may go to stdout: not when --json or --html writes there."""
    return not any(report.to_stdout for report in reports)


@contextlib.contextmanager
def _run_folder(keep: str | None) -> Iterator[Path]:
    """Where the traces go: the --keep folder, or a temporary one removed however the command ends.

    With --keep, a failed or interrupted run leaves its partial trace there (and the error says where);
    without it, nothing is left behind and the error says how to keep them.
    """
    folder = Path(keep) if keep is not None else Path(tempfile.mkdtemp(prefix="repro-audit-runs-"))
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create --keep {folder}: {exc.strerror or exc}") from exc
        yield folder
    except Interrupted as exc:
        exc.kept = [str(folder)] if keep is not None and _holds_anything(folder) else []
        raise
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _holds_anything(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:
        return False


def _trace_paths(configs: Sequence[RunConfig], folder: Path) -> list[Path]:
    return [folder / trace_file_name(config.label, prefix=f"{index}-")
            for index, config in enumerate(configs, 1)]


def _record(configs: Sequence[RunConfig], *, folder: Path, kept: bool, quiet: bool) -> list[Trace]:
    return [Trace(path) for path in record_paths(configs, folder=folder, kept=kept, quiet=quiet)]


def record_paths(configs: Sequence[RunConfig], *, folder: Path, kept: bool, quiet: bool,
                 parallel: bool | None = None) -> list[Path]:
    """Record the configs into `folder`, with progress; a failed run is one line that says how to keep what
    the runs recorded (`--keep DIR`) where they were not kept."""
    jobs = list(zip(configs, _trace_paths(configs, folder)))
    with Progress(quiet=quiet) as progress:
        results = record_all(jobs, progress=progress.update, parallel=parallel)
    try:
        raise_for_failures(results, traces_kept=kept)
    except RunFailed as exc:
        if kept:
            raise
        raise RunFailed(f"{exc} (--keep DIR keeps what they recorded)") from None
    return [path for _, path in jobs]


def _compare_and_report(trace_a: Trace, trace_b: Trace, reports: list[ReportTarget], *,
                        annotate: Annotate | None = None, temporary: Path | None = None, **options: Any) -> int:
    """`annotate` adds to the comparison before it is presented (`--verify`'s table); `temporary`: a folder
    removed when the command ends, so no output points at the traces in it."""
    from repro_audit.audit.diff import compare_traces
    from repro_audit.reports.text import render_text

    with Progress(quiet=options["quiet"]) as progress, \
            progress.stage(f"comparing {trace_a.label} with {trace_b.label}"):
        comparison = compare_traces(trace_a, trace_b, rtol=options["rtol"], atol=options["atol"],
                                    ignore=tuple(options["ignore"]), health_thresholds=thresholds_from(options))
    if annotate is not None:
        annotate(comparison, trace_a, trace_b)
    forget_trace_paths(comparison, temporary)
    if _stdout_is_free(reports):
        color = use_color(options["color"])
        echo_report(render_text(comparison, color=color, width=report_width()), color=color)
    _write_outputs(comparison, trace_a, trace_b, reports, options)
    if comparison.identical and comparison.partial:
        return EXIT_TROUBLE  # a run stopped early: "identical so far" is not "identical"
    return EXIT_SAME if comparison.identical else EXIT_DIFFERENT


def interpreter(path: str | None) -> str | None:
    """An interpreter given by the user, checked before any run: it must start and find repro-audit's
    dependencies (the worker runs with this checkout on its PYTHONPATH)."""
    if path is None:
        return None
    import subprocess

    probe = subprocess.run([path, "-c", "import numpy, yaml, safetensors, xxhash, deepdiff"], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    if probe.returncode != 0:
        missing = (probe.stderr.strip().splitlines() or ["it does not start"])[-1]
        raise UserError(f"interpreter {path} cannot run repro-audit's worker: {missing} (install repro-audit's "
                        f"dependencies into that environment)")
    return str(Path(path).absolute())


def forget_trace_paths(comparison: Comparison, temporary: Path | None) -> None:
    """Traces in a temporary folder are gone once the command ends: no report may point at them."""
    if temporary is None:
        return
    holders = [comparison.run_a, comparison.run_b] + list(comparison.verification.rows if comparison.verification
                                                          else [])
    for holder in holders:
        if holder.trace_path and Path(holder.trace_path).resolve().is_relative_to(temporary.resolve()):
            holder.trace_path = None


def _write_outputs(comparison: Comparison, trace_a: Trace, trace_b: Trace, reports: Sequence[ReportTarget],
                   options: dict[str, Any], check: Sequence[Comparison] | None = None) -> None:
    with Progress(quiet=options["quiet"]) as progress:
        for report in reports:
            where = "stdout" if report.to_stdout else report.path
            if report.option == "--json":
                from repro_audit.reports.json_report import render_json

                with progress.stage(f"writing the JSON report to {where}"):
                    write_report(report, render_json(comparison))
                continue
            from repro_audit.reports.html import render_html

            with progress.stage(f"writing the HTML report to {where}"):
                write_report(report, render_html(comparison, trace_a=trace_a, trace_b=trace_b, check=check))
            if not options.get("quiet") and _stdout_is_free(reports):
                click.echo(f"HTML report: {report.path}")

"""`noise` and `diff A B --seeds K`: is a difference larger than seed-to-seed noise?

Records K seeds of each config through an executor (audit/executors), builds the bands and the per-step
test in audit/noise, and hands the result to the presenters. Exit 0 for `noise`; for `diff --seeds`, 1 when
some curve of B (the loss, a loss term, the gradient norm or a parameter distance) lies outside A's spread
at some step, else 0; the headline names which.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from repro_audit.audit.cli import EXIT_DIFFERENT, EXIT_SAME, cli
from repro_audit.audit.cli_executor import noise_options, opened_executor
from repro_audit.audit.cli_progress import Progress
from repro_audit.audit.config import RunConfig, load_config, refuse_launch
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.noise import NoiseResult, noise_result, record_noise
from repro_audit.audit.outputs import ReportTarget, check_keep_folder, check_report_targets, write_report


@cli.command("noise")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--seeds", type=click.IntRange(min=2), default=5, show_default=True, help="Runs, one per seed.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps (overrides the config).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config field.")
@noise_options
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the traces in this folder.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the bands as JSON ('-': to stdout, instead of the text report).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write a self-contained HTML page with the band charts ('-': to stdout).")
@click.option("-q", "--quiet", is_flag=True, help="No progress, only the result.")
def noise_command(config_path: str, seeds: int, steps: int | None, overrides: tuple[str, ...],
                  **options: Any) -> int:
    """Run CONFIG with K seeds and report the seed-to-seed band of each loss term, the gradient norm and the
    parameter distance from the seed-0 run, per step.

    \b
    Examples:
      repro-audit noise fixtures/configs/torch/baseline.yaml --seeds 8 --steps 10
      repro-audit noise fixtures/configs/torch/baseline.yaml --seeds 4 --vary data --executor ray --address auto
    """
    config = refuse_launch(load_config(config_path, overrides=overrides), what="noise")
    run_noise([config], [Path(config_path)], seeds=seeds, steps=steps, options=options)
    return EXIT_SAME


def noise_diff(configs: list[RunConfig], inputs: list[Path], *, seeds: int, steps: int | None,
               options: dict[str, Any]) -> int:
    """`diff A B --seeds K`: both configs with K seeds; exit 1 when some curve of B is outside A's spread."""
    result = run_noise(configs, inputs, seeds=seeds, steps=steps, options=options)
    return EXIT_DIFFERENT if result.outside else EXIT_SAME


def run_noise(configs: list[RunConfig], inputs: Sequence[Path], *, seeds: int, steps: int | None,
              options: dict[str, Any]) -> NoiseResult:
    from repro_audit.audit.cli_compare import _run_folder

    reports = check_report_targets([("--json", options.get("json_path")), ("--html", options.get("html_path"))],
                                   protected=list(inputs) + ([Path(options["keep"])] if options.get("keep") else []))
    keep = options.get("keep")
    if keep is not None:
        check_keep_folder(keep)
    with _run_folder(keep) as folder, opened_executor(options) as executor, \
            Progress(quiet=options.get("quiet", False)) as progress:
        try:
            traces, results = record_noise(configs, seeds=seeds, vary=options["vary"], steps=steps, folder=folder,
                                           executor=executor, on_done=progress.run_done, traces_kept=keep is not None)
        except RunFailed as exc:
            if keep is not None:
                raise
            raise RunFailed(f"{exc} (--keep DIR keeps what they recorded)") from None
        progress.done()
        result = noise_result(configs, traces, vary=options["vary"], alpha=options["alpha"], results=results)
        _present(result, reports, quiet=options.get("quiet", False))
    return result


def _present(result: NoiseResult, reports: Sequence[ReportTarget], *, quiet: bool) -> None:
    from repro_audit.reports.json_report import render_document
    from repro_audit.reports.text_noise import render_noise_text

    for report in reports:
        if report.option == "--json":
            write_report(report, render_document(result.to_dict()))
        else:
            from repro_audit.reports.html.noise_page import render_noise_html

            write_report(report, render_noise_html(result))
    if not any(report.to_stdout for report in reports):
        click.echo(render_noise_text(result))
        html = next((report for report in reports if report.option == "--html"), None)
        if html is not None and not quiet:
            click.echo(f"HTML report: {html.path}")


__all__ = ["noise_diff", "run_noise"]

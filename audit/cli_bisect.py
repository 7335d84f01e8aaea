"""`repro-audit bisect A B`: the smallest set of changes from A to B that reproduces B's first divergence.

Exit 0 when a subset was found (or there was nothing to bisect), 2 on bad input or failed runs (including
an A that is not deterministic: no subset can be blamed then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from repro_audit.audit.cli import EXIT_SAME, cli
from repro_audit.audit.cli_executor import executor_options, opened_executor
from repro_audit.audit.cli_progress import Progress
from repro_audit.audit.config import load_config, refuse_launch
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.outputs import check_keep_folder, check_report_targets, write_report


@cli.command("bisect")
@click.argument("config_a", type=click.Path(dir_okay=False))
@click.argument("config_b", required=False, type=click.Path(dir_okay=False))
@click.option("--set-a", "set_a", multiple=True, metavar="K=V", help="Override a field of config A.")
@click.option("--set-b", "set_b", multiple=True, metavar="K=V", help="Override a field of config B.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps for every run.")
@executor_options
@click.option("--keep", type=click.Path(file_okay=False), help="Keep every trace in this folder.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the result as JSON ('-': to stdout, instead of the text report).")
@click.option("-q", "--quiet", is_flag=True, help="No progress, only the result.")
def bisect_command(config_a: str, config_b: str | None, set_a: tuple[str, ...], set_b: tuple[str, ...],
                   steps: int | None, keep: str | None, json_path: str | None, quiet: bool, **options: Any) -> int:
    """Find a minimal set of the changes from A to B (config keys, and module files when A and B are in
    different folders) that makes A diverge where and how B does.

    \b
    Examples:
      repro-audit bisect fixtures/configs/torch/baseline.yaml fixtures/configs/torch/zero_entropy_loss.yaml
      repro-audit bisect run.yaml --set-b params.lr=0.01 --set-b label=other --steps 2
    """
    from repro_audit.audit.bisect import Bisection
    from repro_audit.audit.cli_compare import _run_folder
    from repro_audit.reports.json_report import render_document
    from repro_audit.reports.text_bisect import render_bisect_text

    if config_b is None and not set_b:
        raise click.UsageError("give CONFIG_B, or --set-b to bisect CONFIG_A against itself with overrides")
    first = refuse_launch(load_config(config_a, overrides=set_a, steps=steps), what="bisect")
    second = refuse_launch(load_config(config_b or config_a, overrides=set_b, steps=steps), what="bisect")
    inputs = [Path(config_a), Path(config_b or config_a)]
    reports = check_report_targets([("--json", json_path)],
                                   protected=inputs + ([Path(keep)] if keep else []))
    if keep is not None:
        check_keep_folder(keep)
    with _run_folder(keep) as folder, opened_executor(options) as executor, Progress(quiet=quiet) as progress:
        bisection = Bisection(first, second, folder=folder, executor=executor, on_done=progress.run_done,
                              traces_kept=keep is not None)
        try:
            result = bisection.run()
        except RunFailed as exc:
            if keep is not None:
                raise
            raise RunFailed(f"{exc} (--keep DIR keeps what they recorded)") from None
        progress.done()
    for report in reports:
        write_report(report, render_document(result.to_dict()))
    if not any(report.to_stdout for report in reports):
        click.echo(render_bisect_text(result))
    return EXIT_SAME

"""`repro-audit ops CONFIG`: one run with every op executed twice; lists each op that is not reproducible."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from repro_audit.audit.cli import EXIT_DIFFERENT, EXIT_SAME, cli
from repro_audit.audit.cli_progress import Progress
from repro_audit.audit.config import load_config, refuse_launch
from repro_audit.audit.errors import Interrupted, RunFailed
from repro_audit.audit.outputs import (
    check_keep_folder,
    check_report_targets,
    check_trace_destination,
    trace_file_name,
    write_report,
)
from repro_audit.audit.runner import record

OPS_FILE = "ops.json"  # written by probes/*/ops_run.py in the run's trace folder


@cli.command("ops")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config field.")
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps (overrides the config).")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the run's folder (with ops.json) here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the JSON result ('-': to stdout, instead of the text report).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def ops_command(config_path: str, overrides: tuple[str, ...], steps: int | None, keep: str | None,
                json_path: str | None, quiet: bool) -> int:
    """Run CONFIG with every op executed twice on the same inputs; list each op whose results differ.

    Exit 0: every op reproducible and none known to be nondeterministic on the device; 1: some were.

    \b
    Example:
      repro-audit ops fixtures/configs/torch/ops/drifting_op.yaml --steps 2
    """
    from repro_audit.audit.ops.report import ops_report
    from repro_audit.reports.ops_text import render_ops_text

    config = refuse_launch(load_config(config_path, overrides=overrides, steps=steps), what="ops")
    targets = check_report_targets([("--json", json_path)], protected=[Path(config_path)])
    folder = check_keep_folder(keep) if keep is not None else Path(tempfile.mkdtemp(prefix="repro-audit-ops-"))
    trace_path = check_trace_destination(folder / trace_file_name(config.label), option="--keep",
                                         protected=[Path(config_path)])
    try:
        with Progress(quiet=quiet) as progress:
            result = record(config, trace_path, progress=progress.update, mode="ops")
        if not result.ok:
            raise RunFailed(result.failure_line(), trace_path=str(trace_path) if keep else None)
        report = ops_report(_read_ops(trace_path, config.label), label=config.label)
    except Interrupted as exc:
        exc.kept = [str(trace_path)] if keep and trace_path.exists() else []
        raise
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    for target in targets:
        write_report(target, json.dumps(report.to_dict(), sort_keys=True, indent=2) + "\n")
    if not any(target.to_stdout for target in targets):
        click.echo(render_ops_text(report), nl=False)
    return EXIT_SAME if report.clean else EXIT_DIFFERENT


def _read_ops(trace_path: Path, label: str) -> Any:
    try:
        return json.loads((trace_path / OPS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFailed(f"run {label!r}: its ops.json cannot be read: {exc}") from None

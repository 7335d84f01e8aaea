"""`repro-audit health`: record a config (or open a trace) and flag training-health anomalies.

The rules in `repro_audit.audit.health` decide; `render_text` only prints their findings. Exit 0 healthy, 1 flagged,
2 bad input (the CLI group turns our UserErrors into one line).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from repro_audit.audit.cli import EXIT_DIFFERENT, EXIT_SAME, cli
from repro_audit.audit.cli_progress import Progress
from repro_audit.audit.cli_terminal import color_option, echo_report, report_width, use_color
from repro_audit.audit.cli_thresholds import health_threshold_options
from repro_audit.audit.config import RunConfig, load_config, refuse_launch
from repro_audit.audit.errors import ConfigError, Interrupted, RunFailed
from repro_audit.audit.health import RULE_TITLES, HealthReport, Thresholds, check_trace
from repro_audit.audit.health.findings import format_extent
from repro_audit.audit.outputs import (
    check_keep_folder,
    check_report_targets,
    check_trace_destination,
    trace_file_name,
    write_report,
)
from repro_audit.audit.runner import record as record_config
from repro_audit.audit.trace import Trace
from repro_audit.audit.trace import format as fmt
from repro_audit.reports.text_layout import DEFAULT_WIDTH, MIN_WIDTH, fit, style, wrap

SHOWN_PER_RULE = 8


@cli.command("health")
@click.argument("source", metavar="CONFIG", type=click.Path())
@click.option("--steps", type=click.IntRange(min=1), help="Number of steps (overrides the config).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config field.")
@health_threshold_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the findings as JSON ('-': to stdout, instead of the text summary).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write a self-contained HTML page: findings and charts over steps ('-': to stdout).")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the recorded trace in this folder.")
@click.option("--all", "show_all", is_flag=True, help=f"Show every finding (default: {SHOWN_PER_RULE} per anomaly).")
@color_option
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def health_command(source: str, steps: int | None, overrides: tuple[str, ...], json_path: str | None,
                   html_path: str | None, keep: str | None, show_all: bool, color: bool | None, quiet: bool,
                   **limits: Any) -> int:
    """Record CONFIG and flag vanishing or exploding gradients, saturation, dead units, an initial loss far
    from -log(1/C) and memory that grows every step. CONFIG may also be a recorded trace folder.

    \b
    Examples:
      repro-audit health fixtures/configs/torch/baseline.yaml --steps 6
      repro-audit health fixtures/configs/torch/health/dead_relu.yaml --dead-units 0.5 --html health.html
    """
    thresholds = Thresholds(**limits)
    path = Path(source)
    config = None if _is_trace(path) else _health_config(source, steps=steps, overrides=overrides)
    if config is None and (steps is not None or overrides):
        raise ConfigError(f"{source} is a recorded trace: --steps and --set apply to a config only")
    trace_path = None
    protected = [path]
    if config is not None and keep is not None:
        trace_path = check_trace_destination(check_keep_folder(keep) / trace_file_name(config.label),
                                             option="--keep", protected=[path])
        protected.append(trace_path)
    reports = check_report_targets([("--json", json_path), ("--html", html_path)], protected=protected)
    html = None
    with _opened_trace(path, config, trace_path=trace_path, quiet=quiet) as trace, \
            Progress(quiet=quiet) as progress:
        with progress.stage("checking the health rules"):
            report = check_trace(trace, thresholds=thresholds)
        if html_path is not None:  # while the trace exists: its step records draw the charts
            from repro_audit.reports.html.health_page import render_health_html

            with progress.stage("drawing the HTML report"):
                html = render_health_html(report, trace=trace)
    for target in reports:
        text = html if target.option == "--html" else \
            json.dumps(report.as_dict(), sort_keys=True, indent=1, default=str) + "\n"
        write_report(target, text or "")
    if not any(target.to_stdout for target in reports):
        use = use_color(color)
        echo_report(render_text(report, limit=None if show_all else SHOWN_PER_RULE, color=use, width=report_width()),
                    color=use)
        if html_path is not None and not quiet:
            click.echo(f"HTML report: {html_path}")
    return EXIT_SAME if report.healthy else EXIT_DIFFERENT


def _is_trace(path: Path) -> bool:
    return path.is_dir() and (path / fmt.MANIFEST).is_file()


def _health_config(source: str, *, steps: int | None, overrides: tuple[str, ...]) -> RunConfig:
    config = refuse_launch(load_config(source, overrides=overrides, steps=steps), what="health")
    # The rules need these, whatever the config says.
    config.capture["health"] = True
    config.capture["module_outputs"] = True
    return config


@contextmanager
def _opened_trace(path: Path, config: RunConfig | None, *, trace_path: Path | None,
                  quiet: bool) -> Iterator[Trace]:
    """A given trace folder as it is, or the config recorded into `trace_path` (the --keep folder) or into a
    temporary folder removed however the command ends."""
    if config is None:
        yield Trace(path)
        return
    with tempfile.TemporaryDirectory(prefix="repro-audit-health-") as scratch:
        target = trace_path or Path(scratch) / trace_file_name(config.label)
        try:
            with Progress(quiet=quiet) as progress:
                result = record_config(config, target, progress=progress.update)
        except Interrupted as exc:
            exc.kept = [str(target)] if trace_path is not None and target.exists() else []
            raise
        if not result.ok:
            kept = trace_path is not None
            message = result.failure_line() if kept else \
                replace(result, trace_path=None).failure_line() + " (--keep DIR keeps what it recorded)"
            kept_path = str(result.trace_path) if kept and result.trace_path else None
            raise RunFailed(message, trace_path=kept_path)
        yield Trace(target)


def render_text(report: HealthReport, *, limit: int | None = SHOWN_PER_RULE, color: bool = False,
                width: int = DEFAULT_WIDTH) -> str:
    """The terminal summary: one block per anomaly, one entry per layer, capped at `limit` entries a block,
    wrapped to `width` columns."""
    count = len(report.findings)
    verdict = "healthy" if report.healthy else f"{count} anomal{'y' if count == 1 else 'ies'} flagged"
    head = f"health of {report.label!r} ({report.steps} steps): "
    lines = [head + style(verdict, "green" if report.healthy else "red", color)]
    by_rule: dict[str, list[Any]] = {}
    for finding in report.findings:
        by_rule.setdefault(finding.rule, []).append(finding)
    for rule, findings in by_rule.items():
        lines.append(style(f"  {RULE_TITLES.get(rule, rule)}:", "bold", color))
        shown = findings if limit is None else findings[:limit]
        for finding in shown:
            lines += wrap(f"{_layer(finding)}  step {finding.step}: {finding.message}{_extent(finding)}",
                          max(width, MIN_WIDTH), indent="    ", hang="        ")
        if len(shown) < len(findings):
            lines.append(f"    ... and {len(findings) - len(shown)} more (--all shows them)")
    if report.not_checked:
        lines.append(style("  not checked:", "bold", color))
        lines.extend(f"    {reason}" for reason in report.not_checked)
    return "\n".join(fit(lines, max(width, MIN_WIDTH)))


def _layer(finding: Any) -> str:
    name = finding.layer if finding.layer else "(root)"
    kind = finding.evidence.get("type")
    return f"{name} ({kind})" if kind else name


def _extent(finding: Any) -> str:
    text = format_extent(finding.rule, finding.steps, finding.worst)
    return f" ({text})" if text else ""

"""`record`, `check` and `diff` of configs with `launch: {nproc: N}` (or `--nproc N`): runs of N ranks.

Each run is a folder with a trace per rank (audit/trace/ranks.py). The ranks of a run are checked against
each other, and runs against each other rank by rank; the report leads with the first divergence in
(step, rank) order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from repro_audit.audit.cli import EXIT_DIFFERENT, EXIT_SAME
from repro_audit.audit.cli_thresholds import thresholds_from
from repro_audit.audit.config import RunConfig
from repro_audit.audit.diff.compare_ranked import RankedResult, compare_ranked_runs
from repro_audit.audit.divergence import Comparison
from repro_audit.audit.outputs import ReportTarget, write_report
from repro_audit.audit.trace import Trace
from repro_audit.audit.trace.ranks import open_ranks


def record_ranked(configs: Sequence[RunConfig], *, folder: Path, kept: bool, quiet: bool) -> list[list[Trace]]:
    """Record each config's ranks, one run after the other: each run already takes N processes."""
    from repro_audit.audit.cli_compare import record_paths

    paths = record_paths(configs, folder=folder, kept=kept, quiet=quiet, parallel=False)
    return [open_ranks(path) for path in paths]


def report_ranked(runs: list[list[Trace]], *, labels: Sequence[str], name: str, reports: Sequence[ReportTarget],
                  options: dict[str, Any], temporary: Path | None, configs: Sequence[RunConfig] = (),
                  folder: Path | None = None) -> int:
    """`configs` and `folder` (check, diff): with --zoom, a run whose ranks drift is re-run to name the op
    before the drift (audit/ops/drift_zoom.py), into `folder`/zoom."""
    from repro_audit.audit.cli_compare import _stdout_is_free, forget_trace_paths
    from repro_audit.reports.text_ranks import render_ranked_json, render_ranked_text

    result = compare_ranked_runs(runs, labels=labels, rtol=options["rtol"], atol=options["atol"],
                                 ignore=tuple(options["ignore"]), health_thresholds=thresholds_from(options))
    if options.get("zoom") and configs and folder is not None:
        zoom_ranked(result.cross_rank, configs, folder=folder, kept=temporary is None, quiet=options["quiet"])
    for comparison in _comparisons(result):
        forget_trace_paths(comparison, temporary)
    if _stdout_is_free(reports):
        click.echo(render_ranked_text(result, name=name))
    for report in reports:
        if report.option == "--json":
            write_report(report, render_ranked_json(result))
        else:
            from repro_audit.reports.html import render_html

            shown, trace_a, trace_b = _shown(result, runs)
            write_report(report, render_html(shown, trace_a=trace_a, trace_b=trace_b, ranks=result))
    return EXIT_SAME if result.identical else EXIT_DIFFERENT


def _comparisons(result: RankedResult) -> list[Comparison]:
    return list(result.cross_rank) + [entry.comparison for entry in result.rank_by_rank]


def _shown(result: RankedResult, runs: list[list[Trace]]) -> tuple[Comparison, Trace, Trace]:
    """The comparison the HTML report shows (the first divergence's, else run 1's ranks) and its traces."""
    first = result.first()
    for entry in result.rank_by_rank:
        if entry.comparison is first:
            return first, runs[0][entry.rank], runs[entry.run - 1][entry.rank]
    index = next((i for i, c in enumerate(result.cross_rank) if c is first), 0)
    return result.cross_rank[index], runs[index][0], runs[index][-1]


def zoom_ranked(comparisons: Sequence[Comparison], configs: Sequence[RunConfig], *, folder: Path, kept: bool,
                quiet: bool) -> int:
    """The op before each run's earliest drift between ranks, its re-runs under `folder`/zoom; how many ran."""
    from repro_audit.audit.cli_progress import Progress
    from repro_audit.audit.ops.drift_zoom import zoom_into_drifts

    with Progress(quiet=quiet) as progress:
        return zoom_into_drifts(comparisons, configs, folder=folder / "zoom", kept=kept, progress=progress.update)


def summarise_ranked_run(path: Path, *, label: str, zoom: RunConfig | None = None, quiet: bool = True) -> None:
    """What `record` and `show` print for a run of N ranks: each rank's steps and the cross-rank verdict.
    `zoom` (record): the run's config, re-run in a temporary folder to name the op before a drift."""
    from repro_audit.audit.diff.compare_ranks import compare_ranks
    from repro_audit.reports.text import render_text

    ranks = open_ranks(path)
    click.echo(f"{len(ranks)} ranks in {path}: " + ", ".join(
        f"rank {rank} {len(trace.steps)} steps" for rank, trace in enumerate(ranks)))
    comparison = compare_ranks(ranks, label=label)
    if zoom is not None:
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="repro-audit-zoom-"))
        try:
            zoom_ranked([comparison], [zoom], folder=folder, kept=False, quiet=quiet)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    click.echo(render_text(comparison))

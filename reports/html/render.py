"""Render a Comparison (and, when given, both traces) into one self-contained HTML file.

No network at any point: CSS, JS and SVG charts are inlined; nothing is fetched. Jinja2 autoescapes every
value, so names from the user's model are text, never markup. Output is deterministic for the same input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from repro_audit.audit.diff.compare_ranked import RankedResult
from repro_audit.audit.diff.distance import DISTANCE_CATEGORIES
from repro_audit.audit.divergence import Comparison
from repro_audit.audit.trace import Trace
from repro_audit.reports.html import (
    charts,
    distance_charts,
    health_page,
    overview,
    proof,
    steps,
    structure,
    tree,
    zoom,
)
from repro_audit.reports.html.modules_table import modules_view
from repro_audit.reports.html.page import environment, page_assets, write_atomically
from repro_audit.reports.html.ranks import ranks_view


def render_html(comparison: Comparison, *, trace_a: Trace | None = None, trace_b: Trace | None = None,
                check: Sequence[Comparison] | None = None, ranks: RankedResult | None = None) -> str:
    """The report as one HTML document; traces add the per-step detail the comparison does not carry, and
    `ranks` (runs of N ranks) the table of every comparison made rank by rank."""
    context = build_context(comparison, trace_a=trace_a, trace_b=trace_b, check=check, ranks=ranks)
    template = environment().get_template("report.html.j2")
    return template.render(**context)


def write_html(path: str | os.PathLike[str], comparison: Comparison, *, trace_a: Trace | None = None,
               trace_b: Trace | None = None, check: Sequence[Comparison] | None = None) -> Path:
    """Write the report atomically: a reader never sees half a file."""
    return write_atomically(path, render_html(comparison, trace_a=trace_a, trace_b=trace_b, check=check))


def build_context(comparison: Comparison, *, trace_a: Trace | None, trace_b: Trace | None,
                  check: Sequence[Comparison] | None, ranks: RankedResult | None = None) -> dict[str, Any]:
    labels = (f"A · {comparison.run_a.label}", f"B · {comparison.run_b.label}")
    divergence_tree = tree.build_tree(comparison)
    names = steps.parameter_order(trace_a, trace_b)
    gradient_data = steps.gradient_data(comparison, trace_a, trace_b, names)
    loss = steps.loss_view(trace_a, trace_b)
    return {
        # The Content-Security-Policy allows the one inline script and no other.
        **page_assets(),
        "title": overview.page_title(comparison),
        "labels": labels,
        "runs": [_run(comparison.run_a.to_dict()), _run(comparison.run_b.to_dict())],
        "has_traces": [trace_a is not None, trace_b is not None],
        "verdict": overview.verdict(comparison, divergence_tree),
        "divergence": _divergence_view(comparison),
        "modules": modules_view(comparison.distances),
        "verification": proof.proof_view(comparison),
        "zoom": zoom.zoom_view(comparison),
        "timeline": tree.timeline(comparison, divergence_tree),
        "tree": divergence_tree,
        "environment": tree.category_rows(comparison, ("environment", "code"), divergence_tree),
        "config": tree.category_rows(comparison, ("config",), divergence_tree),
        "graph_rows": tree.category_rows(comparison, ("graph",), divergence_tree),
        "graphs": structure.graph_views(comparison, trace_a, trace_b),
        "graph_steps": [trace.graph_steps() if trace is not None else None for trace in (trace_a, trace_b)],
        "init_rows": tree.category_rows(comparison, ("initialisation",), divergence_tree),
        "init": structure.init_view(comparison, trace_a, trace_b),
        "gradient_rows": tree.category_rows(comparison, ("gradients", "nan_provenance"), divergence_tree),
        "gradient_data": gradient_data,
        "provenance": [steps.provenance_view(trace) for trace in (trace_a, trace_b)],
        "attribution": [steps.attribution_view(trace) for trace in (trace_a, trace_b)],
        "nan_map": _nan_map(trace_a, trace_b, names, labels),
        "loss": loss,
        "loss_rows": tree.category_rows(comparison, ("loss_terms",), divergence_tree),
        "loss_chart": _loss_chart(loss, labels),
        "gradient_flow": _gradient_flow(comparison, trace_a, trace_b, labels),
        "check": tree.check_view(comparison, check),
        "ranks": ranks_view(ranks),
        "health": health_page.comparison_view(comparison),
    }


def _run(run: dict[str, Any]) -> dict[str, Any]:
    """A run for the header; a failed run's error is cut to one line's worth (the text report has it whole)."""
    error = run.get("error")
    return {**run, "error": tree.format_value(error, limit=200) if error else None}


def _loss_chart(loss: dict[str, Any] | None, labels: Sequence[str]) -> dict[str, Any] | None:
    if loss is None:
        return None
    svg, cut = charts.loss_chart(loss, labels)
    return {"svg": Markup(svg), "cut": cut}


def _nan_map(trace_a: Trace | None, trace_b: Trace | None, names: list[str],
             labels: Sequence[str]) -> dict[str, Any] | None:
    """Parameters whose gradients held NaN/Inf in either run, against steps; None when no trace has steps."""
    step_numbers = sorted(set(steps.step_records(trace_a)) | set(steps.step_records(trace_b)))
    if not step_numbers or not names:
        return None
    matrices = [steps.nonfinite_matrix(trace, step_numbers, names) for trace in (trace_a, trace_b)]
    rows = [index for index in range(len(names)) if any(matrices[0][index]) or any(matrices[1][index])]
    if not rows:
        return {"svg": None, "rows": [], "parameters": len(names), "steps": step_numbers}
    table = []
    for index in rows:
        firsts = []
        for matrix in matrices:
            hits = [(step, count) for step, count in zip(step_numbers, matrix[index]) if count]
            firsts.append(f"step {hits[0][0]} ({hits[0][1]} values), {len(hits)} steps" if hits else "none")
        table.append({"name": names[index], "a": firsts[0], "b": firsts[1]})
    svg = charts.nan_map_chart([names[index] for index in rows], step_numbers,
                               [[matrix[index] for index in rows] for matrix in matrices], labels)
    return {"svg": Markup(svg), "rows": table, "parameters": len(names), "steps": step_numbers}


def _divergence_view(comparison: Comparison) -> dict[str, Any] | None:
    """The divergence-over-steps chart and what it leaves out; None when the comparison has no distances."""
    distances = comparison.distances
    if distances is None:
        return None
    svg = distance_charts.divergence_chart(distances)
    categories = distances["categories"]
    return {
        "svg": Markup(svg) if svg else None,
        "identical": [name for name, series in categories.items() if not any(series["differing"])],
        "ignored": [name for name in comparison.ignored if name in DISTANCE_CATEGORIES],
        "estimated": any(not all(series["exact"]) for series in categories.values()),
    }


def _gradient_flow(comparison: Comparison, trace_a: Trace | None, trace_b: Trace | None,
                   labels: Sequence[str]) -> Markup | str | None:
    """How far the gradients are apart per parameter at a few steps, with both runs' recorded norms on hover;
    "identical" instead of a chart of identical points when no gradient differs at those steps."""
    flow = (comparison.distances or {}).get("gradient_flow")
    if not flow or not flow["names"]:
        return None
    if not any(differs for panel in flow["panels"] for differs in panel["differs"]):
        return "identical"
    norms = {panel["step"]: (steps.gradient_norms(trace_a, panel["step"], flow["names"]),
                             steps.gradient_norms(trace_b, panel["step"], flow["names"])) for panel in flow["panels"]}
    svg = distance_charts.gradient_flow_chart(flow, norms, labels)
    return Markup(svg) if svg else None

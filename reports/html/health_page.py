"""Training health as HTML: the page of one run (`repro-audit health --html`) and the views the divergence
report's Health section shows for both runs.

The rules in `repro_audit.audit.health` decided what is anomalous; this only lays their findings out and draws what the
trace recorded per step (gradient norm per layer, activation saturation and dead units, memory). Which lines
a chart draws first (the flagged ones) and where it cuts is presentation, and the chart says what it cut.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from repro_audit.audit.divergence import Comparison
from repro_audit.audit.health import RULE_TITLES, HealthReport, format_value
from repro_audit.audit.health.findings import format_extent
from repro_audit.audit.health.rules import output_name
from repro_audit.audit.trace import Trace
from repro_audit.reports.html.charts import SeriesPanel, series_chart
from repro_audit.reports.html.page import environment, page_assets, write_atomically

MAX_PAGE_ROWS = 2000  # findings listed on the health page
MAX_SIDE_ROWS = 50  # findings listed per run in the divergence report's Health section
MAX_LINES = 12  # lines in one chart panel; the flagged ones come first
MAX_NAMED = 3  # names a chart note lists before it counts the rest
MIB = 2**20
GRADIENT_RULES = ("exploding_gradients", "vanishing_gradients")
MEMORY_SERIES = (("heap_in_use", "CPU heap in use"), ("rss", "process RSS"),
                 ("cuda_allocated", "CUDA allocated"), ("cuda_reserved", "CUDA reserved"))
# Activation charts: (kind of output, the share recorded for it, panel title, threshold key).
ACTIVATION_PANELS = (
    (("tanh", "sigmoid"), "saturated_share", "saturated share of tanh/sigmoid outputs", "saturation"),
    (("relu",), "dead_share", "dead-unit share of ReLU-like outputs", "dead_units"),
)


# -- views of HealthReport.as_dict(), for both pages ----------------------------------------------------


def findings_view(report: Mapping[str, Any] | None, *, limit: int = MAX_PAGE_ROWS) -> dict[str, Any] | None:
    """One run's verdict, its findings as table rows (capped) and what was not checked; None: not recorded."""
    if report is None:
        return None
    findings = list(report.get("findings") or [])
    by_rule: dict[str, int] = {}
    for finding in findings:
        title = RULE_TITLES.get(finding["rule"], str(finding["rule"]))
        by_rule[title] = by_rule.get(title, 0) + 1
    count = len(findings)
    return {
        "label": str(report.get("label", "")),
        "steps": report.get("steps"),
        "healthy": not findings,
        "verdict": "healthy" if not findings else f"{count} anomal{'y' if count == 1 else 'ies'} flagged",
        "by_rule": list(by_rule.items()),
        "rows": [_finding_row(finding) for finding in findings[:limit]],
        "cut": max(0, count - limit),
        "not_checked": [str(reason) for reason in report.get("not_checked") or []],
        "thresholds": [(f"--{str(key).replace('_', '-')}", _threshold(value))
                       for key, value in (report.get("thresholds") or {}).items()],
    }


def comparison_view(comparison: Comparison) -> dict[str, Any] | None:
    """Both runs' health as the differ attached it, side by side; None when neither trace recorded any."""
    if comparison.health is None:
        return None
    return {"runs": [findings_view(comparison.health.get(side), limit=MAX_SIDE_ROWS) for side in ("a", "b")]}


def _finding_row(finding: Mapping[str, Any]) -> dict[str, Any]:
    rule = str(finding["rule"])
    layer = str(finding.get("layer") or "") or "(root)"
    title = RULE_TITLES.get(rule, rule)
    return {
        "rule": title,
        "measure": str(finding.get("measure", "")),
        "layer": layer,
        "type": str((finding.get("evidence") or {}).get("type") or ""),
        "step": finding.get("step"),
        "value": _shown(rule, finding.get("value")),
        "threshold": _shown(rule, finding.get("threshold")),
        "message": str(finding.get("message", "")),
        "extent": format_extent(rule, finding.get("steps") or [], finding.get("worst")),
        "filter": f"{layer} {title}",
    }


def _shown(rule: str, value: Any) -> str:
    return format_value(rule, float(value)) if isinstance(value, (int, float)) else str(value)


def _threshold(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- the health page of one run -------------------------------------------------------------------------


def render_health_html(report: HealthReport, *, trace: Trace | None = None) -> str:
    """One self-contained page: verdict, findings, charts over steps (from `trace`, when given), thresholds."""
    template = environment().get_template("health.html.j2")
    return template.render(**build_health_context(report, trace=trace))


def write_health_html(path: str | os.PathLike[str], report: HealthReport, *, trace: Trace | None = None) -> Path:
    """Write the page atomically: a reader never sees half a file."""
    return write_atomically(path, render_health_html(report, trace=trace))


def build_health_context(report: HealthReport, *, trace: Trace | None) -> dict[str, Any]:
    data = report.as_dict()
    records = _records(trace)
    flagged = _flagged(data)
    gradients = _gradient_panel(records, flagged, data) if records else None
    activations = [panel for panel in (_activation_panel(records, flagged, data, *spec)
                                       for spec in ACTIVATION_PANELS) if panel is not None]
    memory = _memory_panel(records) if records else None
    return {
        **page_assets(),
        "health": findings_view(data),
        "run": {"label": report.label, "framework": trace.framework if trace is not None else None,
                "complete": trace.complete if trace is not None else None, "steps": report.steps},
        "has_trace": trace is not None,
        "gradient_chart": _svg([gradients], "health-gradients") if gradients else None,
        "activation_chart": _svg(activations, "health-activations") if activations else None,
        "memory_chart": _svg([memory], "health-memory") if memory else None,
    }


def _svg(panels: Sequence[SeriesPanel], salt: str) -> Markup:
    return Markup(series_chart(panels, salt=salt))


def _records(trace: Trace | None) -> list[tuple[int, dict[str, Any]]]:
    if trace is None:
        return []
    found = [(int(record["step"]), record["health"]) for record in trace.steps
             if isinstance(record.get("health"), dict)]
    return sorted(found, key=lambda item: item[0])


def _flagged(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """Layers and outputs per rule, in the order the findings name them: a chart draws these first."""
    flagged: dict[str, list[str]] = {}
    for finding in data.get("findings") or []:
        names, layer = flagged.setdefault(str(finding["rule"]), []), str(finding.get("layer") or "")
        if layer not in names:
            names.append(layer)
    return flagged


def _gradient_panel(records: list[tuple[int, dict[str, Any]]], flagged: Mapping[str, list[str]],
                    data: Mapping[str, Any]) -> SeriesPanel | None:
    """Gradient L2 norm of every layer over steps (log axis), the whole network's in black."""
    layers: dict[str, str] = {}
    for _, health in records:
        for layer, stats in (health.get("layers") or {}).items():
            layers.setdefault(str(layer), str(stats.get("type") or ""))
    if not layers:
        return None
    wanted = [layer for rule in GRADIENT_RULES for layer in flagged.get(rule, []) if layer in layers]
    chosen, cut = _choose(wanted, list(layers))
    raw = [(_layer_label(layer, layers[layer]),
            [((health.get("layers") or {}).get(layer) or {}).get("grad_norm") for _, health in records])
           for layer in chosen]
    total = [(health.get("total") or {}).get("grad_norm") for _, health in records]
    if any(isinstance(value, (int, float)) for value in total):
        raw.append(("whole network", total))
    zero = [name for name, values in raw if 0 in values]
    nonfinite = [name for name, values in raw
                 if any(isinstance(value, float) and not math.isfinite(value) for value in values)]
    notes = [f"{cut} more layers not drawn"] if cut else []
    if zero:
        notes.append(f"exactly 0 (▼ on the step axis): {_named(zero)}")
    if nonfinite:
        notes.append(f"NaN/Inf (gaps): {_named(nonfinite)}")
    lines = [(name, [_number(value) for value in values]) for name, values in raw]
    limits = [("max grad norm (exploding)", float(data["thresholds"]["max_grad_norm"]))] \
        if flagged.get("exploding_gradients") else []
    return SeriesPanel(title="gradient norm per layer", ylabel="L2 norm", steps=[step for step, _ in records],
                       lines=lines, log=True, limits=limits, emphasis="whole network", note="; ".join(notes))


def _activation_panel(records: list[tuple[int, dict[str, Any]]], flagged: Mapping[str, list[str]],
                      data: Mapping[str, Any], kinds: tuple[str, ...], share: str, title: str,
                      limit: str) -> SeriesPanel | None:
    """One share over steps for every module output of these kinds, with the rule's threshold."""
    outputs: dict[str, str] = {}
    for _, health in records:
        for entry in health.get("activations") or []:
            if entry.get("kind") in kinds and entry.get(share) is not None:
                outputs.setdefault(output_name(entry), str(entry.get("type") or ""))
    if not outputs:
        return None
    wanted = [name for name in flagged.get(limit, []) if name in outputs]
    chosen, cut = _choose(wanted, list(outputs))
    by_step = [{output_name(entry): entry.get(share) for entry in health.get("activations") or []}
               for _, health in records]
    lines = [(_layer_label(name, outputs[name]), [_number(values.get(name)) for values in by_step])
             for name in chosen]
    return SeriesPanel(title=title, ylabel="share", steps=[step for step, _ in records], lines=lines,
                       limits=[(f"threshold ({RULE_TITLES[limit]})", float(data["thresholds"][limit]))],
                       note=f"{cut} more outputs not drawn" if cut else "", ylim=(-0.03, 1.03))


def _memory_panel(records: list[tuple[int, dict[str, Any]]]) -> SeriesPanel | None:
    """Each memory figure the probe could read, in MiB over steps."""
    lines = []
    for key, label in MEMORY_SERIES:
        values = [(health.get("memory") or {}).get(key) for _, health in records]
        if any(isinstance(value, (int, float)) for value in values):
            lines.append((label, [_number(value) / MIB for value in values]))
    if not lines:
        return None
    return SeriesPanel(title="memory per step", ylabel="MiB", steps=[step for step, _ in records], lines=lines,
                       joined=True)


def _choose(first: Sequence[str], every: Sequence[str]) -> tuple[list[str], int]:
    """`first` (deduplicated), then the rest of `every` in order, capped at MAX_LINES; and how many were cut."""
    ordered = list(dict.fromkeys([*first, *every]))
    return ordered[:MAX_LINES], max(0, len(ordered) - MAX_LINES)


def _layer_label(name: str, kind: str) -> str:
    shown = name or "(root)"
    return f"{shown} ({kind})" if kind else shown


def _named(names: Sequence[str]) -> str:
    listed = ", ".join(names[:MAX_NAMED])
    return listed + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

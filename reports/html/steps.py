"""Per-step data the traces recorded, laid out for the report: loss terms, gradients, NaN provenance, attribution.

Only reads and reshapes trace records; which gradients diverge comes from the divergence tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from repro_audit.audit.divergence import Comparison
from repro_audit.audit.trace import Trace
from repro_audit.reports.html.tree import format_value, is_nonfinite

GRADIENT_STATS = ("norm", "max_abs", "mean", "nan", "inf")
MAX_DETAIL_STEPS = 5  # steps shown for NaN provenance and term attribution, per run
MAX_ORIGINS = 20  # NaN origins shown per step


def step_records(trace: Trace | None) -> dict[int, dict[str, Any]]:
    if trace is None:
        return {}
    return {int(record["step"]): record for record in trace.steps}


def parameter_order(trace_a: Trace | None, trace_b: Trace | None) -> list[str]:
    """Parameters in registration order (structure.json), else creation order, else as the gradients list them."""
    names: dict[str, None] = {}
    for trace in (trace_a, trace_b):
        if trace is None:
            continue
        for module in trace.structure.get("modules") or []:
            for parameter in module.get("parameters") or []:
                names.setdefault(str(parameter["name"]), None)
        tensors = sorted(trace.initialisation.get("tensors") or [], key=lambda t: (t.get("creation_index") is None, t.get("creation_index") or 0))
        for tensor in tensors:
            if tensor.get("kind", "parameter") == "parameter":
                names.setdefault(str(tensor["name"]), None)
        for record in trace.steps:
            for name in record.get("gradients") or {}:
                names.setdefault(str(name), None)
    return list(names)


def _json_number(value: Any) -> Any:
    """A statistic for the embedded JSON: 6 significant digits, non-finite as text (JSON has no NaN)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf")
        return float(f"{value:.6g}")
    return value


def gradient_data(comparison: Comparison, trace_a: Trace | None, trace_b: Trace | None,
                  names: Sequence[str]) -> dict[str, Any] | None:
    """Columnar gradient statistics per step and run for the step-by-step table (rendered by inline JS)."""
    records = (step_records(trace_a), step_records(trace_b))
    steps = sorted(set(records[0]) | set(records[1]))
    if not steps or not names:
        return None
    runs: list[dict[str, Any]] = []
    for by_step in records:
        per_step: dict[str, Any] = {}
        for step, record in by_step.items():
            gradients = record.get("gradients") or {}
            columns: dict[str, list[Any]] = {stat: [] for stat in GRADIENT_STATS}
            columns["present"] = []
            for name in names:
                summary = gradients.get(name)
                columns["present"].append(0 if name not in gradients else (1 if summary else 2))
                for stat in GRADIENT_STATS:
                    columns[stat].append(_json_number(summary.get(stat)) if summary else None)
            per_step[str(step)] = columns
        runs.append(per_step)
    index = {name: position for position, name in enumerate(names)}
    marks: dict[str, dict[str, str]] = {}
    for divergence in comparison.walk():
        if divergence.category == "gradients" and divergence.step is not None and divergence.name in index:
            marks.setdefault(str(divergence.step), {}).setdefault(str(index[divergence.name]), divergence.kind)
    marked = sorted(int(step) for step in marks)
    return {
        "names": list(names),
        "steps": steps,
        "default_step": marked[0] if marked else steps[0],
        "a": runs[0],
        "b": runs[1],
        "marks": marks,
    }


def gradient_norms(trace: Trace | None, step: int, names: Sequence[str]) -> list[float] | None:
    """Norm of each parameter's gradient at one step, NaN where there is none (a gap in the chart)."""
    record = step_records(trace).get(step)
    if record is None:
        return None
    gradients = record.get("gradients") or {}
    norms = []
    for name in names:
        summary = gradients.get(name) or {}
        norm = summary.get("norm")
        norms.append(float(norm) if isinstance(norm, (int, float)) else math.nan)
    return norms


def nonfinite_matrix(trace: Trace | None, steps: Sequence[int], names: Sequence[str]) -> list[list[int]]:
    """NaN + Inf count of each parameter's gradient (rows) at each step (columns)."""
    records = step_records(trace)
    matrix = []
    for name in names:
        row = []
        for step in steps:
            summary = ((records.get(step) or {}).get("gradients") or {}).get(name) or {}
            row.append(int(summary.get("nan") or 0) + int(summary.get("inf") or 0))
        matrix.append(row)
    return matrix


def loss_view(trace_a: Trace | None, trace_b: Trace | None) -> dict[str, Any] | None:
    """Loss terms of both runs per step: weights, values, and the series for the chart."""
    records = (step_records(trace_a), step_records(trace_b))
    steps = sorted(set(records[0]) | set(records[1]))
    terms: dict[str, None] = {}
    for by_step in records:
        for step in sorted(by_step):
            for term in by_step[step].get("loss_terms") or {}:
                terms.setdefault(str(term), None)
    if not steps or not terms:
        return None
    rows = []
    series: dict[str, dict[str, list[float]]] = {}
    nonfinite_steps: dict[str, list[int]] = {}
    for term in list(terms) + ["total_loss"]:
        series[term] = {"a": [], "b": []}
        nonfinite_steps[term] = []
        for step in steps:
            row: dict[str, Any] = {"step": step, "term": term}
            for side, by_step in zip("ab", records):
                record = by_step.get(step) or {}
                if term == "total_loss":
                    entry = {"value": record.get("total_loss")} if "total_loss" in record else None
                else:
                    entry = (record.get("loss_terms") or {}).get(term)
                value = (entry or {}).get("value")
                row[f"weight_{side}"] = format_value((entry or {}).get("weight")) if entry else ""
                row[f"value_{side}"] = format_value(value) if entry else "—"
                row[f"nonfinite_{side}"] = is_nonfinite(value)
                if is_nonfinite(value) and step not in nonfinite_steps[term]:
                    nonfinite_steps[term].append(step)
                series[term][side].append(float(value) if isinstance(value, (int, float)) else math.nan)
            rows.append(row)
    return {"steps": steps, "terms": list(terms), "rows": rows, "series": series, "nonfinite_steps": nonfinite_steps}


def provenance_view(trace: Trace | None) -> dict[str, Any] | None:
    """Where NaN/Inf entered the gradients, per step that recorded origins (first few steps)."""
    if trace is None:
        return None
    found = [record for record in trace.steps if record.get("nan_provenance")]
    steps = []
    for record in found[:MAX_DETAIL_STEPS]:
        provenance = record["nan_provenance"]
        origins = provenance.get("origins") or []
        nonfinite = [str(name) for name in provenance.get("nonfinite_parameters") or []]
        steps.append({
            "step": record["step"],
            "origins": [_origin_row(origin) for origin in origins[:MAX_ORIGINS]],
            "origins_cut": max(0, len(origins) - MAX_ORIGINS),
            "nonfinite_parameters": nonfinite,
        })
    return {"label": trace.label, "steps": steps, "steps_cut": len(found) - len(steps)}


def _origin_row(origin: dict[str, Any]) -> dict[str, Any]:
    saved = origin.get("saved_nonfinite") or {}
    saved_text = "; ".join(
        f"{name}: " + ", ".join(f"{key} {count}" for key, count in sorted(counts.items()) if count)
        for name, counts in sorted(saved.items()) if isinstance(counts, dict) and any(counts.values()))
    grad_out = origin.get("grad_out") or {}
    return {
        "node": format_value(origin.get("node")),
        "forward_op": format_value(origin.get("forward_op")),
        "module": format_value(origin.get("module")),
        "loss_term": format_value(origin.get("loss_term")),
        "loss_weight": format_value(origin.get("loss_weight")),
        "inputs_from": ", ".join(str(name) for name in origin.get("inputs_from") or []) or "—",
        "saved_nonfinite": saved_text or "none",
        "grad_in_nonfinite": format_value(origin.get("grad_in_nonfinite")),
        "grad_out": (f"NaN {grad_out.get('nan', 0)}, Inf {grad_out.get('inf', 0)} of {grad_out.get('numel', '?')}"
                     if grad_out else "—"),
    }


def attribution_view(trace: Trace | None) -> dict[str, Any] | None:
    """Per loss term: which parameters its gradient reached, and where it carried NaN/Inf (first few steps)."""
    if trace is None:
        return None
    found = [record for record in trace.steps if record.get("term_attribution")]
    steps = []
    for record in found[:MAX_DETAIL_STEPS]:
        terms = []
        for term, entry in record["term_attribution"].items():
            nonfinite = {str(k): v for k, v in (entry.get("nonfinite") or {}).items() if v}
            nonzero = {str(k): v for k, v in (entry.get("nonzero") or {}).items() if v}
            terms.append({
                "term": str(term),
                "weight": format_value(entry.get("weight")),
                "reached": len(nonzero),
                "nonfinite_params": len(nonfinite),
                "nonfinite_total": sum(int(count) for count in nonfinite.values()),
                "nonfinite": sorted(nonfinite.items()),
            })
        steps.append({"step": record["step"], "terms": terms})
    return {"label": trace.label, "steps": steps, "steps_cut": len(found) - len(steps)}

"""The per-module forward table: module outputs in forward order, each step's max |A-B|, relative error and
ULP distance, the first differing output highlighted (the main view of layer-wise numerics tools).

The numbers are the differ's (`Comparison.distances["modules"]`); this formats them and picks a colour by
decade of the relative error so that the step where a layer drifts stands out.
"""

from __future__ import annotations

import math
from typing import Any

from repro_audit.audit.divergence import display_module
from repro_audit.reports.html.distance_charts import number

MAX_STEP_COLUMNS = 12  # steps shown side by side; with more, the first and last ones


def modules_view(distances: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rows for the template, or None when the comparison carries no module outputs."""
    if not distances or not distances.get("modules"):
        return None
    steps = list(distances["module_steps"])
    columns = _shown_columns(len(steps))
    first = distances.get("first_module")
    rows = []
    for position, row in enumerate(distances["modules"]):
        is_first = first is not None and row["name"] == first["name"]
        rows.append({
            "index": position,
            "name": row["name"],
            "label": display_module(row["name"]) if row["name"] == "" else row["name"],
            "depth": row["name"].split("[", 1)[0].count(".") + (1 if row["name"].split("[", 1)[0] else 0),
            "runs": row["runs"],
            "first": is_first,
            "differs": any(row["differs"]),
            "cells": [_cell(row, index) for index in columns],
        })
    differing = sum(1 for row in rows if row["differs"])
    return {
        "steps": [steps[index] for index in columns],
        "steps_cut": len(steps) - len(columns),
        "all_steps": len(distances["steps"]),
        "rows": rows,
        "cut": distances.get("modules_cut", 0),
        "differing": differing,
        "first": first,
        "exact": all(cell["exact"] for row in rows for cell in row["cells"] if cell["kind"] == "differs"),
    }


def _shown_columns(count: int) -> list[int]:
    if count <= MAX_STEP_COLUMNS:
        return list(range(count))
    half = MAX_STEP_COLUMNS // 2
    return list(range(half)) + list(range(count - half, count))


def _cell(row: dict[str, Any], index: int) -> dict[str, Any]:
    differs, max_abs = row["differs"][index], row["max_abs"][index]
    exact = bool(row["exact"][index])
    if differs is None:
        return {"kind": "absent", "text": "—", "detail": "", "heat": "", "exact": True}
    if not differs:
        return {"kind": "same", "text": "=", "detail": "identical", "heat": "", "exact": True}
    if max_abs is None:
        return {"kind": "nan" if row["nan"][index] else "unknown", "text": "NaN" if row["nan"][index] else "Inf",
                "detail": "distance not known", "heat": "", "exact": exact}
    rel, ulp = row["max_rel"][index], row["max_ulp"][index]
    bound = "" if exact else "≥ "
    detail = f"rel {number(rel, exact=exact)}" + (f" · {bound}{ulp} ULP" if ulp is not None else "")
    return {"kind": "differs", "text": number(max_abs, exact=exact), "detail": detail, "heat": _heat(rel),
            "exact": exact}


def _heat(relative: float | None) -> str:
    """A CSS class per decade of relative error: h0 (below 1e-6) to h6 (1e-1 and above)."""
    if relative is None or relative <= 0:
        return "h0"
    decade = math.floor(math.log10(relative)) if math.isfinite(relative) else 0
    return f"h{min(6, max(0, decade + 7))}"

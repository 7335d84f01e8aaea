"""The divergence tree as the HTML report lays it out: verdict, timeline, folded tree, diff tables, check.

Everything here walks the Comparison the differ built and turns it into plain dicts for the templates; the
decisions (what differs, what caused what) were made before and are only displayed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.divergence import CATEGORIES, RUN_CATEGORIES, STEP_CATEGORIES, Comparison, Divergence
from repro_audit.reports.html.evidence import evidence_rows, readable

MAX_CHILDREN = 50  # consequences shown under one cause; the rest are counted
MAX_TREE_NODES = 2000  # nodes rendered in the whole tree
MAX_TABLE_ROWS = 2000  # rows of one divergence table
MAX_VALUE_CHARS = 400  # characters of one evidence value
MAX_TIMELINE_STEPS = 200  # step columns of the timeline


def format_value(value: Any, *, limit: int = MAX_VALUE_CHARS) -> str:
    """A value as one line of words (no JSON braces and quotes), long values cut and said so."""
    return readable(value, limit=limit)


def is_nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


@dataclass
class TreeView:
    """The rendered part of the tree and the anchor of each rendered divergence (by object id)."""

    roots: list[dict[str, Any]] = field(default_factory=list)
    anchors: dict[int, str] = field(default_factory=dict)
    total: int = 0
    rendered: int = 0


def node_fields(divergence: Divergence) -> dict[str, Any]:
    """What one divergence shows, wherever it is shown."""
    evidence = divergence.evidence or {}
    return {
        "category": divergence.category,
        "step": divergence.step,
        "name": divergence.name,
        "kind": divergence.kind,
        "explanation": divergence.explanation,
        "cause": divergence.cause,
        "a": format_value(evidence["a"]) if "a" in evidence else None,
        "b": format_value(evidence["b"]) if "b" in evidence else None,
        "evidence": evidence_rows(evidence),
    }


def build_tree(comparison: Comparison) -> TreeView:
    view = TreeView(total=sum(1 for divergence in comparison.walk() if divergence.counted))
    budget = [MAX_TREE_NODES]
    for index, root in enumerate(comparison.divergences):
        if budget[0] <= 0:
            break
        view.roots.append(_node(root, f"d{index}", budget, view))
    view.rendered = len(view.anchors)
    return view


def _node(divergence: Divergence, anchor: str, budget: list[int], view: TreeView) -> dict[str, Any]:
    budget[0] -= 1
    view.anchors[id(divergence)] = anchor
    children = []
    for index, child in enumerate(divergence.children):
        if index >= MAX_CHILDREN or budget[0] <= 0:
            break
        children.append(_node(child, f"{anchor}-{index}", budget, view))
    return {
        **node_fields(divergence),
        "anchor": anchor,
        "children": children,
        "hidden_children": len(divergence.children) - len(children),
        # Counted as the category table counts (Divergence.counted): summaries and parts of an item are not.
        "descendants": sum(1 for below in list(divergence.walk())[1:] if below.counted),
    }


def timeline(comparison: Comparison, tree: TreeView) -> dict[str, Any]:
    """Categories (rows, causal order) against the run and its steps (columns); roots and consequences counted."""
    cells: dict[tuple[str, int | None], dict[str, Any]] = {}
    root_ids = {id(root) for root in comparison.divergences}
    first = comparison.first_divergence
    max_step = max(comparison.run_a.steps_recorded, comparison.run_b.steps_recorded, 0)
    for divergence in comparison.walk():
        if divergence.step is not None:
            max_step = max(max_step, divergence.step)
        cell = cells.setdefault((divergence.category, divergence.step),
                                {"roots": 0, "consequences": 0, "anchor": None, "first": False})
        if divergence.counted:
            cell["roots" if id(divergence) in root_ids else "consequences"] += 1
        if cell["anchor"] is None:
            cell["anchor"] = tree.anchors.get(id(divergence))
        if divergence is first:
            cell["first"] = True
    steps = list(range(1, min(max_step, MAX_TIMELINE_STEPS) + 1))
    compared = min(comparison.run_a.steps_recorded, comparison.run_b.steps_recorded)
    known = list(CATEGORIES) + sorted({category for category, _ in cells} - set(CATEGORIES))
    rows = []
    for category in known:
        run_cell = cells.get((category, None)) if category in RUN_CATEGORIES or category not in CATEGORIES else None
        step_cells = [cells.get((category, step)) if category in STEP_CATEGORIES or category not in CATEGORIES
                      else None for step in steps]
        rows.append({
            "category": category,
            "ignored": category in comparison.ignored,
            "run_applies": category in RUN_CATEGORIES or category not in CATEGORIES,
            "steps_apply": category in STEP_CATEGORIES or category not in CATEGORIES,
            "run": run_cell,
            "steps": step_cells,
        })
    return {
        "steps": steps,
        "compared": compared,
        "cut": max(0, max_step - MAX_TIMELINE_STEPS),
        "rows": rows,
        "counts": _category_counts(comparison),
    }


def _category_counts(comparison: Comparison) -> list[tuple[str, str]]:
    """Compared and diverged per category; an ignored category says so instead of looking clean."""
    ordered = [c for c in CATEGORIES if c in comparison.category_counts or c in comparison.ignored]
    ordered += sorted(set(comparison.category_counts) - set(ordered))
    return [(category, "ignored (not compared)" if category in comparison.ignored and
             category not in comparison.category_counts else
             ", ".join(f"{key} {format_value(value)}" for key, value in sorted(comparison.category_counts[category].items())))
            for category in ordered]


def category_rows(comparison: Comparison, categories: Iterable[str], tree: TreeView) -> dict[str, Any]:
    """Every divergence of these categories, in tree order, as rows of a diff table (capped)."""
    wanted = set(categories)
    rows: list[dict[str, Any]] = []
    total = 0
    for divergence in comparison.walk():
        if divergence.category not in wanted:
            continue
        total += 1
        if len(rows) < MAX_TABLE_ROWS:
            rows.append({**node_fields(divergence), "anchor": tree.anchors.get(id(divergence))})
    # The run A / run B columns only where some row has values of both runs.
    has_values = any(row["a"] is not None or row["b"] is not None for row in rows)
    return {"rows": rows, "total": total, "cut": total - len(rows), "has_values": has_values}


def nodes_of(comparison: Comparison, category: str) -> list[Divergence]:
    return [divergence for divergence in comparison.walk() if divergence.category == category]


def check_view(reference: Comparison, check: Sequence[Comparison] | None) -> dict[str, Any] | None:
    """For `repro-audit check`: run 1 against each other run, which differ and where they first do."""
    if check is None:
        return None
    runs = []
    for comparison in check:
        first = comparison.first_divergence
        seen = {divergence.category for divergence in comparison.walk()}
        runs.append({
            "label": comparison.run_b.label,
            "trace_path": comparison.run_b.trace_path,
            "complete": comparison.run_b.complete,
            "error": comparison.run_b.error,
            "identical": comparison.identical,
            "partial": comparison.partial,
            "divergences": sum(1 for _ in comparison.walk()),
            "categories": [c for c in CATEGORIES if c in seen] + sorted(seen - set(CATEGORIES)),
            "first": node_fields(first) if first else None,
        })
    reference_label = check[0].run_a.label if check else reference.run_a.label
    return {
        "reference": reference_label,
        "runs": runs,
        "differing": sum(1 for run in runs if not run["identical"]),
    }

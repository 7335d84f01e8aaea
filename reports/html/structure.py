"""Run-level structure for the report: initialisation order with seed offsets, and op sequences of graphs.

Rows are highlighted from the divergence tree (kind "moved", a `seed_offset` in the evidence, graph
`opcodes`); nothing here compares the two runs itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

from repro_audit.audit.divergence import Comparison, Divergence, display_module
from repro_audit.audit.trace import Trace
from repro_audit.reports.html.tree import format_value

MAX_INIT_ROWS = 5000
MAX_GRAPH_ROWS = 3000
EQUAL_CONTEXT = 3  # identical ops shown around a change; longer identical runs are folded into one row


def init_marks(comparison: Comparison) -> dict[str, str]:
    """CSS class of each tensor named by an initialisation divergence: moved, shifted, or the kind."""
    marks: dict[str, str] = {}
    for divergence in comparison.walk():
        if divergence.category != "initialisation" or divergence.name in marks:
            continue
        if divergence.kind in ("moved", "order"):
            marks[divergence.name] = "moved"
        elif "seed_offset" in divergence.evidence or divergence.cause == "seed_offset_shift":
            marks[divergence.name] = "shifted"
        else:
            marks[divergence.name] = divergence.kind
    return marks


def init_view(comparison: Comparison, trace_a: Trace | None, trace_b: Trace | None) -> dict[str, Any] | None:
    """Both runs' tensors side by side, each in its own creation order, with seed offsets."""
    if trace_a is None and trace_b is None:
        return None
    marks = init_marks(comparison)
    sides = []
    for trace in (trace_a, trace_b):
        tensors = (trace.initialisation.get("tensors") or []) if trace is not None else []
        sides.append(sorted(tensors, key=lambda t: (t.get("creation_index") is None, t.get("creation_index") or 0, str(t.get("name")))))
    if not sides[0] and not sides[1]:
        return None
    rows: list[dict[str, Any]] = []
    for tensor_a, tensor_b in zip_longest(*sides):
        if len(rows) >= MAX_INIT_ROWS:
            break
        cells = [_init_cell(tensor, marks) for tensor in (tensor_a, tensor_b)]
        names = " ".join(cell["name"] for cell in cells if cell)
        rows.append({"a": cells[0], "b": cells[1], "filter": names})
    generators = [format_value((trace.initialisation.get("generators") if trace else None) or None)
                  for trace in (trace_a, trace_b)]
    return {
        "rows": rows,
        "cut": max(len(sides[0]), len(sides[1])) - len(rows),
        "counts": [len(side) for side in sides],
        "generators": generators,
        "marked": len(marks),
    }


def _init_cell(tensor: dict[str, Any] | None, marks: dict[str, str]) -> dict[str, Any] | None:
    if tensor is None:
        return None
    name = str(tensor.get("name"))
    return {
        "name": name,
        "index": format_value(tensor.get("creation_index")),
        "seed_offset": format_value(tensor.get("seed_offset")),
        "initialiser": format_value(tensor.get("initialiser")),
        "shape": format_value(tensor.get("shape")),
        "kind": format_value(tensor.get("kind")),
        "mark": marks.get(name, ""),
    }


def graph_at(trace: Trace | None, step: int) -> dict[str, Any] | None:
    """The graph in effect at `step`: the latest stored graph at or before it (later steps store only changes)."""
    if trace is None:
        return None
    stored = [number for number in trace.graph_steps() if number <= step]
    return trace.graph(stored[-1]) if stored else None


def graph_views(comparison: Comparison, trace_a: Trace | None, trace_b: Trace | None) -> list[dict[str, Any]]:
    """One side-by-side op table per top-level graph divergence."""
    views = []
    for divergence, parent_is_graph in _graph_nodes(comparison.divergences, False):
        if parent_is_graph and not {"opcodes", "ops_a", "ops_b"} & set(divergence.evidence):
            continue
        views.append(_graph_view(divergence, trace_a, trace_b))
    return views


def _graph_nodes(divergences: Sequence[Divergence], parent_is_graph: bool) -> list[tuple[Divergence, bool]]:
    found = []
    for divergence in divergences:
        is_graph = divergence.category == "graph"
        if is_graph:
            found.append((divergence, parent_is_graph))
        found.extend(_graph_nodes(divergence.children, is_graph))
    return found


def _graph_view(divergence: Divergence, trace_a: Trace | None, trace_b: Trace | None) -> dict[str, Any]:
    evidence = divergence.evidence
    step = int(evidence.get("graph_step") or divergence.step or 1)
    ops = []
    for key, trace in (("ops_a", trace_a), ("ops_b", trace_b)):
        if key in evidence:
            ops.append(list(evidence[key] or []))
        else:
            ops.append(list((graph_at(trace, step) or {}).get("ops") or []))
    opcodes = evidence.get("opcodes")
    if opcodes:
        rows = _rows_from_opcodes(opcodes, ops[0], ops[1])
    else:
        removed = {int(c.evidence["index_a"]) for c in divergence.walk() if "index_a" in c.evidence}
        added = {int(c.evidence["index_b"]) for c in divergence.walk() if "index_b" in c.evidence}
        rows = _positional_rows(ops[0], ops[1], removed, added)
    shown = rows[:MAX_GRAPH_ROWS]
    return {
        "name": divergence.name,
        "step": step,
        "explanation": divergence.explanation,
        "counts": [len(ops[0]), len(ops[1])],
        "rows": _with_group_headers(shown),
        "cut": len(rows) - len(shown),
        "groups": _group_summary(rows, ops),
        "aligned": bool(opcodes),
    }


def _op_cell(ops: Sequence[dict[str, Any]], index: int, mark: str) -> dict[str, Any]:
    op = ops[index] if 0 <= index < len(ops) else {}
    return {
        "index": op.get("index", index),
        "op": str(op.get("op", "?")),
        "phase": str(op.get("phase") or ""),
        "module": str(op.get("module") or ""),
        "loss_term": "" if op.get("loss_term") is None else str(op.get("loss_term")),
        "mark": mark,
    }


def _rows_from_opcodes(opcodes: Sequence[Sequence[Any]], ops_a: Sequence[dict[str, Any]],
                       ops_b: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows from difflib-style opcodes [tag, a_start, a_end, b_start, b_end]; long identical runs folded."""
    rows: list[dict[str, Any]] = []
    for tag, a_start, a_end, b_start, b_end in opcodes:
        if tag == "equal":
            length = a_end - a_start
            keep = range(length) if length <= 2 * EQUAL_CONTEXT + 1 else \
                list(range(EQUAL_CONTEXT)) + [-1] + list(range(length - EQUAL_CONTEXT, length))
            for offset in keep:
                if offset == -1:
                    rows.append({"skip": length - 2 * EQUAL_CONTEXT})
                else:
                    rows.append({"a": _op_cell(ops_a, a_start + offset, ""),
                                 "b": _op_cell(ops_b, b_start + offset, "")})
            continue
        a_range = range(a_start, a_end) if tag in ("delete", "replace") else range(0)
        b_range = range(b_start, b_end) if tag in ("insert", "replace") else range(0)
        for index_a, index_b in zip_longest(a_range, b_range):
            rows.append({"a": _op_cell(ops_a, index_a, "removed") if index_a is not None else None,
                         "b": _op_cell(ops_b, index_b, "added") if index_b is not None else None})
    return rows


def _positional_rows(ops_a: Sequence[dict[str, Any]], ops_b: Sequence[dict[str, Any]],
                     removed: set[int], added: set[int]) -> list[dict[str, Any]]:
    """Without an alignment from the differ: both sequences by position, marked ops highlighted."""
    rows = []
    for index in range(max(len(ops_a), len(ops_b))):
        rows.append({
            "a": _op_cell(ops_a, index, "removed" if index in removed else "") if index < len(ops_a) else None,
            "b": _op_cell(ops_b, index, "added" if index in added else "") if index < len(ops_b) else None,
        })
    return rows


def _group_key(row: dict[str, Any]) -> tuple[str, str, str] | None:
    cell = row.get("b") or row.get("a")
    if not cell:
        return None
    return (cell["phase"], cell["module"], cell["loss_term"])


def _with_group_headers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert a header row wherever the module or loss term of the ops changes."""
    out: list[dict[str, Any]] = []
    previous = None
    for row in rows:
        key = _group_key(row)
        if key is not None and key != previous:
            out.append({"group": {"phase": key[0], "module": display_module(key[1]),
                                  "loss_term": key[2] or "(no term)"}})
            previous = key
        out.append(row)
    return out


def _group_summary(rows: list[dict[str, Any]], ops: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per module and loss term: ops in each run and ops added or removed, for groups that changed."""
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for side, sequence in zip("ab", ops):
        for op in sequence:
            key = (str(op.get("module") or ""), "" if op.get("loss_term") is None else str(op.get("loss_term")))
            groups.setdefault(key, {"a": 0, "b": 0, "added": 0, "removed": 0})[side] += 1
    for row in rows:
        for side, mark in (("a", "removed"), ("b", "added")):
            cell = row.get(side)
            if cell and cell["mark"] == mark:
                key = (cell["module"], cell["loss_term"])
                groups.setdefault(key, {"a": 0, "b": 0, "added": 0, "removed": 0})[mark] += 1
    return [{"module": display_module(module), "loss_term": term or "(no term)", **counts}
            for (module, term), counts in groups.items() if counts["added"] or counts["removed"]]

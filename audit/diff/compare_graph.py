"""Graph: the module tree, and the op sequence of each step aligned between the runs.

Op sequences are aligned with difflib (as `diff` aligns lines) on op type and phase only, so a renamed
module does not break the alignment; what was added or removed is then grouped by the module and loss
term the probes attributed each op to. A no-op branch (a loss term weighted 0.0) is still a different
computation, and this is where it shows.
"""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Any

from audit.diff.context import CompareContext
from audit.diff.matching import match_names
from audit.diff.registry import CategoryResult, comparator
from audit.divergence import Divergence, display_module
from audit.trace import Trace

MAX_GROUPS = 12  # module / loss-term groups named in the evidence of one graph change


@comparator("graph")
def compare_graph(context: CompareContext) -> CategoryResult:
    result = _compare_modules(context)
    previous: tuple[Any, Any] | None = None
    for step, record_a, record_b in context.step_pairs():
        digests = ((record_a.get("graph") or {}).get("digest"), (record_b.get("graph") or {}).get("digest"))
        result.compared += 1
        if digests[0] == digests[1] or digests == previous or None in digests:
            previous = digests
            continue
        previous = digests
        result.divergences.append(_op_sequence_change(context, step, digests))
    return result


def _compare_modules(context: CompareContext) -> CategoryResult:
    modules_a = _modules(context.trace_a)
    modules_b = _modules(context.trace_b)
    match = match_names(list(modules_a), list(modules_b),
                        signature=lambda side, path: (modules_a if side == "a" else modules_b)[path]["type"])
    result = CategoryResult(compared=len(match.pairs))
    for kind, paths, modules in (("removed", match.removed, modules_a), ("added", match.added, modules_b)):
        where = "run B" if kind == "added" else "run A"
        for path in paths:
            module = modules[path]
            result.divergences.append(Divergence(
                "graph", f"module {path}", kind, order=module["position"],
                explanation=f"module {path} ({module['type']}, {module['parameters']} parameters) exists only "
                            f"in {where}.",
                evidence={"module": path, "type": module["type"], "parameters": module["parameters"]}))
    for path_a, path_b in match.renamed:
        result.divergences.append(Divergence(
            "graph", f"module {path_b}", "renamed", order=modules_b[path_b]["position"],
            explanation=f"module {path_a} in run A is {path_b} in run B.", evidence={"a": path_a, "b": path_b}))
    for path_a, path_b in match.pairs:
        type_a, type_b = modules_a[path_a]["type"], modules_b[path_b]["type"]
        if type_a != type_b:
            result.divergences.append(Divergence(
                "graph", f"module {path_b}", "changed", order=modules_b[path_b]["position"],
                explanation=f"module {path_b} is a {type_a} in run A and a {type_b} in run B.",
                evidence={"a": type_a, "b": type_b}))
    return result


def _modules(trace: Trace) -> dict[str, dict[str, Any]]:
    modules = {}
    for position, module in enumerate(trace.structure.get("modules") or []):
        modules[str(module.get("path", ""))] = {"type": module.get("type"), "position": position,
                                                "parameters": len(module.get("parameters") or [])}
    return modules


def graph_at(trace: Trace, step: int) -> dict[str, Any] | None:
    """The op graph in effect at `step`: the latest one stored at or before it."""
    stored = [number for number in trace.graph_steps() if number <= step]
    return trace.graph(stored[-1]) if stored else None


def _op_sequence_change(context: CompareContext, step: int, digests: tuple[Any, Any]) -> Divergence:
    graph_a, graph_b = graph_at(context.trace_a, step), graph_at(context.trace_b, step)
    if graph_a is None or graph_b is None or graph_a.get("digest") == graph_b.get("digest"):
        return Divergence(
            "graph", f"op graph at step {step}", "changed", step=step, order=0,
            explanation=f"the op sequence of step {step} differs (its digest; no full graph was stored).",
            evidence={"digest": {"a": digests[0], "b": digests[1]}})
    ops_a, ops_b = list(graph_a.get("ops") or []), list(graph_b.get("ops") or [])
    tokens_a = [f"{op.get('phase')}:{op.get('op')}" for op in ops_a]
    tokens_b = [f"{op.get('phase')}:{op.get('op')}" for op in ops_b]
    opcodes = difflib.SequenceMatcher(None, tokens_a, tokens_b, autojunk=False).get_opcodes()
    removed: Counter[tuple[str, str]] = Counter()
    added: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], dict[str, int]] = {}
    for tag, a1, a2, b1, b2 in opcodes:
        if tag == "equal":
            continue
        for index in range(a1, a2):
            group = _group(ops_a[index])
            removed[group] += 1
            first.setdefault(group, {}).setdefault("index_a", index)
        for index in range(b1, b2):
            group = _group(ops_b[index])
            added[group] += 1
            first.setdefault(group, {}).setdefault("index_b", index)
    groups = sorted(set(added) | set(removed), key=lambda g: min(first[g].values()))
    children = [_group_divergence(step, group, added[group], removed[group], first[group], order)
                for order, group in enumerate(groups)]
    total_added, total_removed = sum(added.values()), sum(removed.values())
    by_group = [{"module": g[0], "loss_term": g[1], "added": added[g], "removed": removed[g]}
                for g in groups[:MAX_GROUPS]]
    named = ", ".join(_group_text(g, added[g], removed[g]) for g in groups[:3])
    more = f" and {len(groups) - 3} more places" if len(groups) > 3 else ""
    return Divergence(
        "graph", f"op graph at step {step}", "changed", step=step, order=0, children=children,
        explanation=(f"at step {step} run B runs {total_added} ops that run A does not and leaves out "
                     f"{total_removed} ({len(ops_a)} ops in A, {len(ops_b)} in B): {named}{more}."),
        evidence={"graph_step": step, "opcodes": [list(code) for code in opcodes],
                  "ops_added": total_added, "ops_removed": total_removed, "counts": {"a": len(ops_a), "b": len(ops_b)},
                  "by_group": by_group, "groups_cut": max(0, len(groups) - MAX_GROUPS),
                  "level": graph_b.get("level")})


def _group(op: dict[str, Any]) -> tuple[str, str]:
    return display_module(op.get("module")), str(op.get("loss_term") or "(no loss term)")


def _group_text(group: tuple[str, str], added: int, removed: int) -> str:
    counts = " ".join(part for part in (f"+{added}" if added else "", f"-{removed}" if removed else "") if part)
    term = "" if group[1].startswith("(") else f", loss term {group[1]}"
    return f"{counts} in {group[0]}{term}"


def _group_divergence(step: int, group: tuple[str, str], added: int, removed: int, first: dict[str, int],
                      order: int) -> Divergence:
    kind = "added" if added and not removed else "removed" if removed and not added else "changed"
    evidence: dict[str, Any] = {"module": group[0], "loss_term": group[1], "ops_added": added,
                                "ops_removed": removed, "graph_step": step}
    evidence.update(first)
    return Divergence("graph", f"ops in {group[0]} ({group[1]})", kind, step=step, order=order, evidence=evidence,
                      explanation=f"{_group_text(group, added, removed)} at step {step}.")

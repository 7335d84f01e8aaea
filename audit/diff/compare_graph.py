"""Graph: the module tree, and the op sequence of each step aligned between the runs.

Op sequences are aligned with difflib (as `diff` aligns lines) on op type, phase and module, B's modules
named as their match in A, so a renamed module does not break the alignment and an op is not aligned with
one of the same type in another layer; what was added or removed is then grouped by the module and loss
term the probes attributed each op to. A no-op branch (a loss term weighted 0.0) is still a different
computation, and this is where it shows.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.matching import match_names
from repro_audit.audit.diff.registry import CategoryResult, comparator
from repro_audit.audit.divergence import Divergence, display_module
from repro_audit.audit.trace import Trace

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
    result = CategoryResult(compared=len(match.pairs) + len(match.added) + len(match.removed))
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


def _module_names_as_in_a(context: CompareContext) -> dict[Any, str]:
    """B's module paths under the name their match has in A (renamed Keras layers align with theirs)."""
    modules_a, modules_b = _modules(context.trace_a), _modules(context.trace_b)
    match = match_names(list(modules_a), list(modules_b),
                        signature=lambda side, path: (modules_a if side == "a" else modules_b)[path]["type"])
    return {path_b: path_a for path_a, path_b in match.pairs}


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
    as_in_a = _module_names_as_in_a(context)
    tokens_a = [f"{op.get('phase')}:{op.get('op')}:{op.get('module')}" for op in ops_a]
    tokens_b = [f"{op.get('phase')}:{op.get('op')}:{as_in_a.get(op.get('module'), op.get('module'))}" for op in ops_b]
    opcodes = difflib.SequenceMatcher(None, tokens_a, tokens_b, autojunk=False).get_opcodes()
    groups: dict[tuple[str, str], OpGroup] = {}
    feeds_a, feeds_b = SharedPath(ops_a, opcodes, "a"), SharedPath(ops_b, opcodes, "b")
    for tag, a1, a2, b1, b2 in opcodes:
        if tag == "equal":
            continue
        for index in range(a1, a2):
            groups.setdefault(_group(ops_a[index]), OpGroup()).add(ops_a[index], "removed", index,
                                                                   feeds_a.feeds_shared(index))
        for index in range(b1, b2):
            groups.setdefault(_group(ops_b[index]), OpGroup()).add(ops_b[index], "added", index,
                                                                   feeds_b.feeds_shared(index))
    ordered = sorted(groups, key=lambda g: groups[g].first)
    children = [_group_divergence(step, group, groups[group], order) for order, group in enumerate(ordered)]
    total_added = sum(g.counts["added"] for g in groups.values())
    total_removed = sum(g.counts["removed"] for g in groups.values())
    feeding = [g for g in ordered if groups[g].feeds_shared]
    by_group = [{"module": g[0], "loss_term": g[1], "added": groups[g].counts["added"],
                 "removed": groups[g].counts["removed"], "ops": groups[g].op_names(),
                 "feeds_shared": groups[g].feeds_shared} for g in ordered[:MAX_GROUPS]]
    named = "; ".join(_group_text(g, groups[g]) for g in ordered[:3])
    more = f"; and {len(ordered) - 3} more places" if len(ordered) > 3 else ""
    known = feeds_a.known and feeds_b.known
    shared = (f" {sum(groups[g].feeds_shared for g in feeding)} of them feed the model's shared forward pass "
              f"(first: {_group_text(feeding[0], groups[feeding[0]])}): it computes otherwise."
              if feeding else " None of them feeds the model's shared forward pass: a branch of its own, joining "
              "at most the total loss." if known else "")
    return Divergence(
        "graph", f"op graph at step {step}", "changed", step=step, order=0, children=children,
        explanation=(f"at step {step} run B runs {total_added} ops that run A does not and leaves out "
                     f"{total_removed} ({len(ops_a)} ops in A, {len(ops_b)} in B): {named}{more}.{shared}"),
        evidence={"graph_step": step, "opcodes": [list(code) for code in opcodes],
                  "ops_added": total_added, "ops_removed": total_removed, "counts": {"a": len(ops_a), "b": len(ops_b)},
                  "by_group": by_group, "groups_cut": max(0, len(ordered) - MAX_GROUPS),
                  "feeds_shared": sum(groups[g].feeds_shared for g in feeding) if known else None,
                  "level": graph_b.get("level")})


class OpGroup:
    """The ops one run has and the other lacks, in one module for one loss term."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.names: dict[str, Counter[str]] = {"added": Counter(), "removed": Counter()}
        self.first = 1 << 62
        self.indices: dict[str, int] = {}
        self.feeds_shared = 0

    def add(self, op: dict[str, Any], kind: str, index: int, feeds_shared: bool) -> None:
        self.counts[kind] += 1
        self.names[kind][str(op.get("op"))] += 1
        self.first = min(self.first, index)
        self.indices.setdefault(f"index_{'a' if kind == 'removed' else 'b'}", index)
        self.feeds_shared += feeds_shared

    def op_names(self) -> dict[str, dict[str, int]]:
        return {kind: dict(names.most_common()) for kind, names in self.names.items() if names}


class SharedPath:
    """Which of one run's ops feed an op of the model's forward pass that both runs run (a forward op in a
    module, in an `equal` block): an added op that does changes what the shared model computes; one that
    does not is a branch of its own, which joins at most the total loss (as every loss term does)."""

    def __init__(self, ops: list[dict[str, Any]], opcodes: Sequence[tuple[str, int, int, int, int]], side: str) -> None:
        shared: set[int] = set()
        for tag, a1, a2, b1, b2 in opcodes:
            if tag == "equal":
                shared.update(index for index in (range(a1, a2) if side == "a" else range(b1, b2))
                              if ops[index].get("phase") == "forward" and ops[index].get("module") is not None)
        self.known = any("inputs_from" in op for op in ops)
        self.consumers: dict[int, list[int]] = {}
        for index, op in enumerate(ops):
            for producer in op.get("inputs_from") or []:
                if isinstance(producer, int) and producer >= 0:
                    self.consumers.setdefault(producer, []).append(index)
        self.shared = shared

    def feeds_shared(self, index: int) -> bool:
        return any(consumer in self.shared for consumer in self.consumers.get(index, ()))


def _group(op: dict[str, Any]) -> tuple[str, str]:
    return display_module(op.get("module")), str(op.get("loss_term") or "(no loss term)")


MAX_OPS_NAMED = 4  # op names in one group's text; the evidence has them all


def _group_text(group: tuple[str, str], ops: OpGroup) -> str:
    parts = []
    for kind, sign in (("added", "+"), ("removed", "-")):
        if ops.counts[kind]:
            names = ops.names[kind].most_common()
            shown = ", ".join(f"{name}" + (f" x{n}" if n > 1 else "") for name, n in names[:MAX_OPS_NAMED])
            cut = f", {len(names) - MAX_OPS_NAMED} more kinds" if len(names) > MAX_OPS_NAMED else ""
            parts.append(f"{sign}{ops.counts[kind]} ({shown}{cut})")
    term = "" if group[1].startswith("(") else f", loss term {group[1]}"
    return f"{' '.join(parts)} in {group[0]}{term}"


def _group_divergence(step: int, group: tuple[str, str], ops: OpGroup, order: int) -> Divergence:
    added, removed = ops.counts["added"], ops.counts["removed"]
    kind = "added" if added and not removed else "removed" if removed and not added else "changed"
    evidence: dict[str, Any] = {"module": group[0], "loss_term": group[1], "ops_added": added,
                                "ops_removed": removed, "graph_step": step, "ops": ops.op_names(),
                                "feeds_shared": ops.feeds_shared}
    evidence.update(ops.indices)
    feeds = f"; {ops.feeds_shared} feed the model's shared forward pass" if ops.feeds_shared else ""
    # A part of the step's op graph, the one item compared: not counted on its own.
    return Divergence("graph", f"ops in {group[0]} ({group[1]})", kind, step=step, order=order, evidence=evidence,
                      explanation=f"{_group_text(group, ops)} at step {step}{feeds}.", counted=False)

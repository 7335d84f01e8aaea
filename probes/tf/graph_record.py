"""The op graph of one traced step, labelled with phase, layer and loss term (graphs/step_NNNNN.json).

Ops are listed in creation order, which in a TF graph is a topological order. Labels come from what the
capture saw while tracing: op id ranges of layer calls (module), of gradient functions (the forward op of
each backward op), and the phase marks the step program set. A forward op belongs to a loss term when it
lies on the path from a trainable variable to that term's output; ops no term depends on through a
variable (mask construction, constants) get `loss_term: null`, as torch's autograd graph has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from repro_audit.probes.common.hashing import hash_text
from repro_audit.probes.tf.capture import GradientCall, LayerCall

# Stateful random ops: their values come from a kernel-held stream seeded by (seed, seed2) attributes.
STATEFUL_RANDOM_OPS = {"RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
                       "Multinomial", "RandomShuffle", "RandomGamma", "RandomPoisson", "RandomPoissonV2",
                       "ParameterizedTruncatedNormal"}


@dataclass
class TracedStep:
    """One traced step (or the executed part of a v1 graph) and what the capture saw while building it."""

    graph: Any
    start: int  # op ids in (start, forward_end] are forward, then backward, then optimizer up to end
    forward_end: int
    backward_end: int
    end: int
    term_tensors: dict[str, Any]
    weights: dict[str, float]
    sources: set[int]  # op ids whose outputs are trainable variables (handles or v1 variable ops)
    layer_calls: list[LayerCall] = field(default_factory=list)
    gradient_calls: list[GradientCall] = field(default_factory=list)
    only: set[int] | None = None  # v1 graphs: the op ids one step executes
    module_of_name: Callable[[str], str | None] | None = None  # v1 graphs: module from the name scope


@dataclass
class OpLabels:
    ops: list[Any]  # tf.Operation in creation order
    index: dict[int, int]  # op id -> position in ops
    phase: dict[int, str]
    module: dict[int, str | None]
    terms: dict[int, list[str]]
    forward: dict[int, Any]  # backward op id -> forward tf.Operation


def label_ops(traced: TracedStep) -> OpLabels:
    ops = [op for op in traced.graph.get_operations()
           if traced.start < op._id <= traced.end and (traced.only is None or op._id in traced.only)]
    index = {op._id: position for position, op in enumerate(ops)}
    phase = {op._id: _phase(op._id, traced) for op in ops}
    module: dict[int, str | None] = {op._id: None for op in ops}
    for call in traced.layer_calls:  # pre-order: inner calls overwrite their parents
        for op_id in range(call.start + 1, call.end + 1):
            if op_id in module:
                module[op_id] = call.path
    if traced.module_of_name is not None:
        for op in ops:
            if phase[op._id] == "forward" and module[op._id] is None:
                module[op._id] = traced.module_of_name(op.name)
    terms = _term_membership(ops, traced)
    forward: dict[int, Any] = {}
    for call in sorted(traced.gradient_calls, key=lambda c: c.start - c.end):  # outer ranges first
        for op_id in range(call.start + 1, call.end + 1):
            if op_id in index:
                forward[op_id] = call.forward_op
    for op_id, forward_op in forward.items():
        module[op_id] = module.get(forward_op._id, _module_outside(forward_op, traced))
        terms[op_id] = terms.get(forward_op._id, [])
    return OpLabels(ops, index, phase, module, terms, forward)


def _module_outside(op: Any, traced: TracedStep) -> str | None:
    if traced.module_of_name is not None:
        return traced.module_of_name(op.name)
    return None


def _phase(op_id: int, traced: TracedStep) -> str:
    if op_id <= traced.forward_end:
        return "forward"
    if op_id <= traced.backward_end:
        return "backward"
    return "optimizer"


def _term_membership(ops: list[Any], traced: TracedStep) -> dict[int, list[str]]:
    """For each forward op: the loss terms whose value depends on it through a trainable variable."""
    on_path = set(traced.sources)
    for op in ops:
        if op._id > traced.forward_end:
            break
        if any(tensor.op._id in on_path for tensor in op.inputs):
            on_path.add(op._id)
    membership: dict[int, list[str]] = {}
    for name, tensor in traced.term_tensors.items():
        for op_id in ancestors([tensor.op], within=on_path):
            membership.setdefault(op_id, []).append(name)
    return membership


def ancestors(roots: Iterable[Any], *, within: set[int] | None = None, control: bool = False) -> set[int]:
    """Op ids reachable backwards from `roots` through data inputs (and control inputs if asked)."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        op = todo.pop()
        if op._id in seen or (within is not None and op._id not in within):
            continue
        seen.add(op._id)
        todo.extend(tensor.op for tensor in op.inputs)
        if control:
            todo.extend(op.control_inputs)
    return seen


def term_label(terms: list[str] | None) -> str | None:
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else "shared"


def graph_record(step: int, labels: OpLabels) -> dict[str, Any]:
    """graphs/step_NNNNN.json: every op with type, name, phase, layer, loss term and producers."""
    records = []
    for position, op in enumerate(labels.ops):
        terms = labels.terms.get(op._id) or []
        record: dict[str, Any] = {
            "index": position,
            "op": op.type,
            "name": op.name,
            "phase": labels.phase[op._id],
            "module": labels.module[op._id],
            "loss_term": term_label(terms),
            "shapes": [_shape(t) for t in op.outputs],
            "input_shapes": [_shape(t) for t in op.inputs],
            "inputs_from": [labels.index.get(t.op._id, -1) for t in op.inputs],
        }
        if len(terms) > 1:
            record["loss_terms"] = terms
        forward = labels.forward.get(op._id)
        if forward is not None:
            record["forward_op"] = labels.index.get(forward._id)
            record["forward_type"] = forward.type
        if op.type in STATEFUL_RANDOM_OPS:
            record["seed"] = _seed_attrs(op)
        records.append(record)
    return {"step": step, "level": "tf-graph", "digest": graph_digest(labels), "ops": records}


def graph_digest(labels: OpLabels) -> str:
    return hash_text("\n".join(f"{labels.phase[op._id]}:{op.type}" for op in labels.ops))


def _shape(tensor: Any) -> list[int | None] | None:
    shape = tensor.shape
    if shape.rank is None:
        return None
    return [None if n is None else int(n) for n in shape.as_list()]


def _seed_attrs(op: Any) -> list[int] | None:
    try:
        return [int(op.get_attr("seed")), int(op.get_attr("seed2"))]
    except (ValueError, TypeError):
        return None


def trainable_sources(graph: Any, variables: Iterable[Any]) -> set[int]:
    """Op ids in `graph` that stand for trainable variables: captured handles or v1 variable ops."""
    handles = {}
    for variable in variables:
        handle = getattr(variable, "handle", None)
        if handle is not None:
            handles[id(handle)] = variable
    sources: set[int] = set()
    captures = getattr(graph, "captures", None)
    if captures is not None:
        for external, internal in _capture_pairs(captures):
            if id(external) in handles:
                sources.add(internal.op._id)
    for variable in variables:  # v1 graphs: the variable's own op lives in this graph
        op = getattr(variable, "op", None)
        if op is not None and getattr(op, "graph", None) is graph:
            sources.add(op._id)
    return sources


def _capture_pairs(captures: Any) -> list[tuple[Any, Any]]:
    if isinstance(captures, Mapping):
        return list(captures.items())
    return [tuple(pair) for pair in captures]

"""Where NaN or Inf entered the gradients, and which loss term sends what to which parameter.

Both look again at a step that already ran, on the state it started from (`StepProgram.rewound`): Keras
random ops are stateless, so a replay draws the same dropout masks. Provenance traces the step's forward
and backward once more as a tf.function that also returns, for every float op output, how many values are
NaN, +Inf and -Inf; an origin is a backward op whose incoming gradients are finite and whose outputs are
not. The forward pass may hold -Inf on purpose (a mask): that is not flagged, it shows up as
`saved_nonfinite` of the origin that multiplied it by a zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from repro_audit.probes.tf.capture import graph_mark
from repro_audit.probes.tf.graph_record import OpLabels, TracedStep, label_ops, term_label, trainable_sources
from repro_audit.probes.tf.tensors import to_numpy

MAX_ORIGINS = 8
Stats = dict[tuple[int, int], tuple[int, int, int, int]]  # (op id, output index) -> nan, +inf, -inf, numel


def group_by_dtype(tensors: Sequence[Any]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tensor.dtype.name, []).append(index)
    return list(groups.values())


def nonfinite_matrix(tensors: Sequence[Any]) -> Any:
    """Graph ops counting NaN, +Inf, -Inf and elements of each tensor (all of one dtype): [n, 4] int64."""
    import tensorflow as tf

    parts = [tf.reshape(tensor, [-1]) for tensor in tensors]
    if parts[0].dtype not in (tf.float32, tf.float64):
        parts = [tf.cast(part, tf.float32) for part in parts]  # exact for half and bfloat16
    flat = tf.concat(parts, axis=0)
    sizes = tf.stack([tf.size(tensor, out_type=tf.int64) for tensor in tensors])
    segments = tf.repeat(tf.range(len(tensors), dtype=tf.int64), sizes)
    masks = tf.stack([tf.math.is_nan(flat), tf.equal(flat, float("inf")), tf.equal(flat, float("-inf"))], axis=1)
    counts = tf.math.unsorted_segment_sum(tf.cast(masks, tf.int64), segments, len(tensors))
    return tf.concat([counts, sizes[:, None]], axis=1)


def nonfinite_counts(tensors: Sequence[Any]) -> list[tuple[list[int], Any]]:
    """`nonfinite_matrix` per dtype group: [(indices into tensors, [n, 4] tensor)]."""
    return [(members, nonfinite_matrix([tensors[i] for i in members])) for members in group_by_dtype(tensors)]


def find_origins(program: Any, batch: Any, step: int) -> list[dict[str, Any]]:
    """Trace forward + backward with non-finite counts of every op output, run it, read the origins."""
    import tensorflow as tf

    holder: dict[str, Any] = {}

    def diagnose(batch: Any) -> Any:
        capture = program.capture
        capture.reset()
        capture.keep_outputs = False
        capture.phase = "forward"
        capture.active = True
        try:
            start = graph_mark()
            with tf.GradientTape() as tape:
                terms = program.call_loss(batch, step)
                names = [str(name) for name in terms]
                weights = {name: program.weight_of(name) for name in names}
                values = [tf.reshape(tf.convert_to_tensor(terms[name]), []) for name in names]
                total = tf.add_n([tf.cast(v, values[0].dtype) * weights[n] for n, v in zip(names, values)])
            forward_end = graph_mark()
            capture.phase = "backward"
            tape.gradient(total, program.train_vars)
            backward_end = graph_mark()
        finally:
            capture.active = False
        graph = tf.compat.v1.get_default_graph()
        outputs = [(op._id, index, tensor) for op in graph.get_operations()
                   if start < op._id <= backward_end for index, tensor in enumerate(op.outputs)
                   if tensor.dtype.is_floating]
        holder["outputs"] = [(op_id, index) for op_id, index, _ in outputs]
        holder["traced"] = TracedStep(graph, start, forward_end, backward_end, backward_end,
                                      dict(zip(names, values)), weights,
                                      trainable_sources(graph, [p.tf_variable for p in program.params]),
                                      list(capture.layer_calls), list(capture.gradient_calls))
        counted = nonfinite_counts([t for _, _, t in outputs]) if outputs else []
        holder["groups"] = [members for members, _ in counted]
        return [matrix for _, matrix in counted]

    matrices = tf.function(diagnose, autograph=False)(batch)
    stats: Stats = {}
    for members, matrix in zip(holder["groups"], matrices):
        for member, row in zip(members, to_numpy(matrix).tolist()):
            stats[holder["outputs"][member]] = tuple(int(n) for n in row)  # type: ignore[assignment]
    traced: TracedStep = holder["traced"]
    return origins_from(label_ops(traced), stats, traced.weights)


def origins_from(labels: OpLabels, stats: Stats, weights: Mapping[str, float]) -> list[dict[str, Any]]:
    """Backward ops with finite incoming gradients and non-finite outputs; forward ones if the loss is bad."""
    def bad(tensor: Any) -> int:
        row = stats.get((tensor.op._id, tensor.value_index))
        return (row[0] + row[1] + row[2]) if row else 0

    found = []
    for op in labels.ops:
        if labels.phase[op._id] != "backward" or not any(bad(t) for t in op.outputs):
            continue
        incoming = [t for t in op.inputs if labels.phase.get(t.op._id) == "backward"]
        if any(bad(t) for t in incoming):
            continue
        found.append(_describe(op, labels, stats, weights, phase="backward"))
        if len(found) >= MAX_ORIGINS:
            return found
    if not found:
        found = _forward_origins(labels, stats, weights, bad)
    return found


def _forward_origins(labels: OpLabels, stats: Stats, weights: Mapping[str, float], bad: Any) -> list[dict[str, Any]]:
    """A non-finite loss: walk back along non-finite forward values to ops whose inputs were all finite."""
    roots = [op for op in labels.ops if labels.phase[op._id] == "forward" and labels.terms.get(op._id)
             and any(bad(t) for t in op.outputs)]
    seen: set[int] = set()
    found = []
    todo = list(roots)
    while todo and len(found) < MAX_ORIGINS:
        op = todo.pop()
        if op._id in seen:
            continue
        seen.add(op._id)
        bad_inputs = [t.op for t in op.inputs if bad(t)]
        if bad_inputs:
            todo.extend(bad_inputs)
        else:
            found.append(_describe(op, labels, stats, weights, phase="forward"))
    return sorted(found, key=lambda origin: origin["index"])


def _describe(op: Any, labels: OpLabels, stats: Stats, weights: Mapping[str, float], *, phase: str
              ) -> dict[str, Any]:
    forward = labels.forward.get(op._id) if phase == "backward" else op
    terms = labels.terms.get(op._id) or []
    term = term_label(terms)
    saved: dict[str, dict[str, int]] = {}
    for position, tensor in enumerate(op.inputs):
        if phase == "backward" and labels.phase.get(tensor.op._id) == "backward":
            continue
        row = stats.get((tensor.op._id, tensor.value_index))
        if row and (row[0] or row[1] or row[2]):
            key = tensor.op.type if tensor.op.type not in saved else f"{tensor.op.type}:{position}"
            saved[key] = {"nan": row[0], "posinf": row[1], "neginf": row[2]}
    out = [stats.get((op._id, index)) for index in range(len(op.outputs))]
    return {
        "index": labels.index[op._id],
        "node": op.type,
        "name": op.name,
        "phase": phase,
        "forward_op": forward.type if forward is not None else None,
        "forward_name": forward.name if forward is not None else None,
        "module": labels.module.get(op._id),
        "loss_term": term,
        "loss_terms": terms,
        "loss_weight": weights.get(term) if term in weights else None,
        "inputs_from": [t.op.type for t in forward.inputs] if forward is not None else [],
        "saved_nonfinite": saved,
        "grad_in_nonfinite": 0,
        "grad_out": {"nan": sum(r[0] for r in out if r), "inf": sum(r[1] + r[2] for r in out if r),
                     "numel": sum(r[3] for r in out if r)},
    }


def attribute_terms(program: Any, batch: Any, step: int) -> dict[str, Any]:
    """Per weighted loss term: which parameters it sends non-finite or non-zero gradients to (eager)."""
    import tensorflow as tf

    with tf.GradientTape(persistent=True) as tape:
        terms = program.call_loss(batch, step)
        weighted = {str(name): tf.reshape(tf.convert_to_tensor(value), []) * program.weight_of(str(name))
                    for name, value in terms.items()}
    attribution: dict[str, Any] = {}
    for term, value in weighted.items():
        entry: dict[str, Any] = {"weight": program.weight_of(term), "nonfinite": {}, "nonzero": {}, "norm": {}}
        grads = tape.gradient(value, program.train_vars)
        for tracked, grad in zip(program.params, grads):
            if grad is None:
                continue
            array = to_numpy(grad)
            nonfinite = int(np.count_nonzero(~np.isfinite(array)))
            nonzero = int(np.count_nonzero(array))
            with np.errstate(all="ignore"):
                norm = float(np.linalg.norm(array.astype(np.float64).reshape(-1)))
            if nonfinite:
                entry["nonfinite"][tracked.name] = nonfinite
            if nonzero:
                entry["nonzero"][tracked.name] = nonzero
            entry["norm"][tracked.name] = norm if math.isfinite(norm) else None
        entry["params_nonfinite"] = len(entry["nonfinite"])
        entry["params_nonzero"] = len(entry["nonzero"])
        attribution[term] = entry
    del tape
    return attribution

"""Training-health statistics of one TensorFlow step: the `health` key of a step record (docs/health.md).

The same record as `repro_audit.probes.torch.health.step_health` writes, so the rules in `repro_audit.audit.health` read both
alike. Almost everything comes from what the recorded step already returns: the gradient and parameter
summaries give per-layer norms, minima, maxima and zero counts, the layer-output summaries give min, max,
mean and std. What is left are the saturation and dead-unit counts of activation outputs, which
`activation_counts` builds as a few extra reductions of the same step (extra outputs of the same
tf.function, or of the v1 session.run), and a few reads of process memory. This module only measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro_audit.probes.common.health_numbers import (
    SIGMOID_SATURATION,
    TANH_SATURATION,
    current_rss,
    empty_layer,
    finish_layer,
    fmax,
    fmin,
    heap_in_use,
    initial_loss,
    moments,
)
from repro_audit.probes.tf.tensors import FLOAT_NAMES

TANH, SIGMOID, RELU = "tanh", "sigmoid", "relu"
# Layer types whose output is an activation, by class name: Keras's own, and torch's names for custom ones.
ACTIVATION_TYPES: dict[str, str] = {
    "ReLU": RELU, "LeakyReLU": RELU, "PReLU": RELU, "ELU": RELU,
    "Tanh": TANH, "Sigmoid": SIGMOID, "ReLU6": RELU, "GELU": RELU, "SELU": RELU, "SiLU": RELU, "Mish": RELU,
    "Softplus": RELU, "CELU": RELU,
}
# Keras activation functions by `__name__`: a Dense(activation="relu") or an Activation("tanh") layer.
ACTIVATION_FUNCTIONS: dict[str, str] = {
    "tanh": TANH, "hard_tanh": TANH, "sigmoid": SIGMOID, "hard_sigmoid": SIGMOID,
    "relu": RELU, "relu6": RELU, "leaky_relu": RELU, "elu": RELU, "selu": RELU, "gelu": RELU, "silu": RELU,
    "swish": RELU, "mish": RELU, "softplus": RELU, "celu": RELU, "hard_silu": RELU, "hard_swish": RELU,
}
# TF op types that end an activation: a block whose call ends in tf.nn.relu / tf.tanh (traced steps only).
ACTIVATION_OPS: dict[str, str] = {
    "Tanh": TANH, "Sigmoid": SIGMOID,
    "Relu": RELU, "Relu6": RELU, "LeakyRelu": RELU, "Elu": RELU, "Selu": RELU, "Softplus": RELU,
}
# Layers that only zero and scale their input: a never-positive unit stays never positive, a saturation
# share would not (dropout scales kept values by 1/(1-p)), so only "relu" is inherited, as torch does.
PASS_THROUGH_TYPES = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                                "Identity"})

Summary = Mapping[str, Any]


@dataclass
class ActivationOutput:
    """One layer output the health record describes, and where its summary is in the step's outputs."""

    key: str  # module_outputs/<module>#<call>
    module: str  # layer path, with "[i]" for one output of several
    call: int
    type: str | None
    kind: str | None
    tensor: Any


def activation_outputs(calls: Sequence[Any], *, activation_types: Mapping[str, str] | None = None
                       ) -> list[ActivationOutput]:
    """Every floating-point layer output of a step, once, in execution order, with its activation kind.

    `calls` are the capture's `LayerCall`s. A tensor returned unchanged by nested layers (a Sequential
    ending in its Dense(activation="tanh")) is described once, under the innermost layer: the last call
    in execution order (calls are listed as they start) that returned it.
    """
    types = {**ACTIVATION_TYPES, **(activation_types or {})}
    owners: dict[int, tuple[int, Any, int]] = {}
    kinds: dict[tuple[int, int], str | None] = {}
    latest: dict[int, str | None] = {}  # id(tensor) -> its kind so far, for pass-through layers to inherit
    for position, call in enumerate(calls):
        for index, (_, tensor) in enumerate(call.outputs):
            if getattr(tensor.dtype, "name", None) not in FLOAT_NAMES:
                continue
            kind = _kind(call, tensor, types, latest)
            kinds[(position, index)] = kind
            latest[id(tensor)] = kind or latest.get(id(tensor))
            owners[id(tensor)] = (position, call, index)
    found = []
    for position, call, index in sorted(owners.values(), key=lambda owner: (owner[0], owner[2])):
        suffix, tensor = call.outputs[index]
        found.append(ActivationOutput(f"module_outputs/{call.path}{suffix}#{call.call}", f"{call.path}{suffix}",
                                      call.call, call.type, kinds[(position, index)], tensor))
    return found


def graph_activation_outputs(module_outputs: Mapping[str, Any]) -> list[ActivationOutput]:
    """Graph mode: the tensors `extras["module_outputs"]` names, with the kind of the op that made them."""
    found = []
    for path, tensor in module_outputs.items():
        if getattr(tensor.dtype, "name", None) not in FLOAT_NAMES:
            continue
        op = getattr(tensor, "op", None)
        kind = _op_kind(tensor)
        found.append(ActivationOutput(f"module_outputs/{path}#0", path, 0, getattr(op, "type", None), kind, tensor))
    return found


def activation_counts(outputs: Sequence[ActivationOutput]) -> Any:
    """Graph (or eager) ops: an int64 [n, 2] of (saturated values or dead units, units) per output that has
    a kind, in order; None when none has one. One or two fused reductions per activation output."""
    import tensorflow as tf

    rows = [_count_row(tf, output.tensor, output.kind) for output in outputs if output.kind is not None]
    return tf.stack(rows) if rows else None


def step_health(*, step: int, parameters: Sequence[Any], module_types: Mapping[str, str | None],
                summaries: Mapping[str, Summary | None], outputs: Sequence[ActivationOutput] | None,
                counts: Any = None, loss_terms: Mapping[str, float] | None = None, num_classes: Any = None,
                notes: list[str] | None = None) -> dict[str, Any]:
    """The `health` record of one step, from the step's summaries and `activation_counts`' values.

    `parameters` are the trace's trainable variables (`TrackedVariable`: `name`, `module`, `variable`);
    `summaries` the step's tensor summaries by output key (`gradients/<name>`, `parameters/<name>`,
    `module_outputs/<module>#<call>`); `outputs` what `activation_outputs` found (None: the step kept no
    layer outputs, which the record's notes say). `loss_terms` and `num_classes` are used at step 1 only.
    """
    notes = list(notes or [])
    layers, total = layer_statistics(parameters, summaries)
    for layer, stats in layers.items():
        stats["type"] = module_types.get(layer)
    activations = activation_statistics(outputs or [], summaries, counts)
    if outputs is None:
        notes.append("activation statistics need module outputs (capture.module_outputs is off)")
    record: dict[str, Any] = {"layers": layers, "total": total, "activations": activations,
                              "memory": memory_usage(step), "notes": notes}
    if step == 1:
        record["initial_loss"] = initial_loss(loss_terms or {}, num_classes, notes=notes)
    return record


def layer_statistics(parameters: Sequence[Any], summaries: Mapping[str, Summary | None]
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gradient norm, min, max, max-abs, zero share and weight norm per layer and for the whole network."""
    per_layer: dict[str, dict[str, Any]] = {}
    network = empty_layer()
    for tracked in parameters:
        weight = summaries.get(f"parameters/{tracked.name}")
        if not weight or weight.get("dtype") not in FLOAT_NAMES or not weight.get("numel"):
            continue
        numel = int(weight["numel"])
        grad = summaries.get(f"gradients/{tracked.name}")
        for entry in (per_layer.setdefault(tracked.module, empty_layer()), network):
            entry["weight_sq"] += float(weight["norm"] if weight.get("norm") is not None else 0.0) ** 2
            entry["params"] += numel
            if not grad or grad.get("norm") is None:
                continue
            entry["grad_sq"] += float(grad["norm"]) ** 2
            entry["grad_min"] = fmin(entry["grad_min"], float(grad["min"]))
            entry["grad_max"] = fmax(entry["grad_max"], float(grad["max"]))
            entry["grad_zeros"] += int(grad.get("zeros") or 0)
            entry["grad_numel"] += numel
    return {path: finish_layer(entry) for path, entry in per_layer.items()}, finish_layer(network)


def activation_statistics(outputs: Sequence[ActivationOutput], summaries: Mapping[str, Summary | None],
                          counts: Any) -> list[dict[str, Any]]:
    """Min, max, mean, std of every layer output (from its summary); saturation and dead-unit shares from
    the counts where the output has a kind. The std is the population std from the L2 norm and the mean."""
    rows = iter(np.asarray(counts).reshape(-1, 2).tolist() if counts is not None else [])
    entries = []
    for output in outputs:
        summary = summaries.get(output.key) or {}
        row = next(rows) if output.kind is not None else None
        numel = int(summary.get("numel") or 0)
        if numel == 0:
            continue
        entry: dict[str, Any] = {"module": output.module, "call": output.call, "type": output.type,
                                 "kind": output.kind, "numel": numel}
        if summary.get("norm") is not None:
            entry.update(moments(summary["min"], summary["max"], summary["mean"] * numel, summary["norm"], numel))
        if row is not None:
            counted, units = row
            if output.kind in (TANH, SIGMOID):
                entry["saturated_share"] = counted / numel
            elif units > 0:
                entry["units"] = int(units)
                entry["dead_units"] = int(counted)
                entry["dead_share"] = counted / units
        entries.append(entry)
    return entries


def memory_usage(step: int) -> dict[str, Any]:
    """Memory now: process RSS, bytes malloc has handed out (glibc: TF's CPU allocator mallocs), and the
    accelerator memory TF's allocator holds (`get_memory_info`, on devices that support it).

    The heap is read at every step up to HEAP_EVERY_STEP_UNTIL, then at every HEAP_EVERY-th (`step`; null
    between): in a TF process glibc's `mallinfo2` walks the free lists of every malloc arena (TF's many
    threads have many), 3.3 ms of a 45 ms Keras step here, more than the rest of the health record. The
    memory rule reads growth per step between readings. TF's own CPU allocator counter is no substitute:
    it counts only tensors of 256 KiB and more.

    The keys are torch's: `cuda_allocated` is TF's `current` bytes summed over the GPUs; `cuda_reserved`
    stays null, as TF reports no reserved-but-free figure (its `peak` is not one).
    """
    rss, source = current_rss()
    heap = heap_in_use() if reads_heap(step) else None
    return {"rss": rss, "rss_source": source, "heap_in_use": heap, "cuda_allocated": _gpu_current(),
            "cuda_reserved": None}


HEAP_EVERY_STEP_UNTIL = 8
HEAP_EVERY = 8


def reads_heap(step: int) -> bool:
    return step <= HEAP_EVERY_STEP_UNTIL or step % HEAP_EVERY == 0


# -- parts ---------------------------------------------------------------------------------------------


def _kind(call: Any, tensor: Any, types: Mapping[str, str], kinds: Mapping[int, str | None]) -> str | None:
    """By layer type, else by its activation function, else by the op that produced the output (traced
    steps only: an eager tensor has no op), else inherited through a pass-through layer."""
    kind = types.get(call.type) or ACTIVATION_FUNCTIONS.get(getattr(call, "activation", None) or "")
    if kind is not None:
        return kind
    kind = _op_kind(tensor)
    if kind is not None:
        return kind
    inputs = getattr(call, "input_ids", ())
    if len(inputs) == 1 and len(call.outputs) == 1:
        # The kind of the layer output it was given, else of the op that made its input (traced steps):
        # a Dropout after a plain tf.nn.relu inside a block.
        inherited = kinds.get(inputs[0]) or ACTIVATION_OPS.get((getattr(call, "input_ops", ()) or (None,))[0] or "")
        # The same tensor handed back (Dropout outside training) keeps any kind.
        if inputs[0] == id(tensor) or (call.type in PASS_THROUGH_TYPES and inherited == RELU):
            return inherited
    return None


def _op_kind(tensor: Any) -> str | None:
    try:
        op = tensor.op
    except (AttributeError, ValueError):  # an EagerTensor: no op
        return None
    seen = 0
    while op is not None and op.type == "Identity" and op.inputs and seen < 8:
        op, seen = op.inputs[0].op, seen + 1
    return ACTIVATION_OPS.get(op.type) if op is not None else None


def _count_row(tf: Any, tensor: Any, kind: str) -> Any:
    y = tensor if tensor.dtype in (tf.float32, tf.float64) else tf.cast(tensor, tf.float32)
    zero = tf.constant(0, tf.int64)
    if kind == TANH:
        return tf.stack([tf.math.count_nonzero(tf.abs(y) > TANH_SATURATION), zero])
    if kind == SIGMOID:
        return tf.stack([tf.math.count_nonzero((y < SIGMOID_SATURATION) | (y > 1.0 - SIGMOID_SATURATION)), zero])
    if y.shape.rank == 0:
        return tf.stack([zero, zero])
    # A unit (feature along the last dimension) is dead when never positive in the whole batch.
    peaks = tf.reduce_max(tf.reshape(y, [-1, tf.shape(y)[-1]]), axis=0)
    return tf.stack([tf.math.count_nonzero(peaks <= 0), tf.cast(tf.size(peaks), tf.int64)])


def _gpu_current() -> int | None:
    """Bytes TF's allocator holds on the GPUs now; None without a GPU (CPU:0 has no memory info)."""
    import tensorflow as tf

    total, seen = 0, False
    for device in tf.config.list_logical_devices("GPU"):
        try:
            total += int(tf.config.experimental.get_memory_info(device.name)["current"])
            seen = True
        except (ValueError, RuntimeError):
            continue
    return total if seen else None



"""Training-health statistics of one torch step: the `health` key of a step record (docs/health.md).

Assembled at the end of a step, after `optimizer.step()` (gradients are still in `p.grad` then, parameters
are already updated), from the step recorder's summaries and what the output probe counted as each module
returned (output_probe). Reductions are torch ops fetched with one `.tolist()` per group and device, never
per-element Python; the framework-free arithmetic is shared with TF in `probes.common.health_numbers`. The rules that judge these numbers live in
`audit.health`; this module only measures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from probes.common.health_numbers import (
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
from probes.common.native_summary import kernel
from probes.torch.tensors import FLOAT_DTYPES

# Output kinds whose statistics have a meaning beyond min/max/mean/std.
TANH, SIGMOID, RELU = "tanh", "sigmoid", "relu"
ACTIVATION_TYPES: dict[str, str] = {
    "Tanh": TANH, "Sigmoid": SIGMOID,
    "ReLU": RELU, "ReLU6": RELU, "LeakyReLU": RELU, "RReLU": RELU, "PReLU": RELU, "GELU": RELU, "ELU": RELU,
    "CELU": RELU, "SELU": RELU, "SiLU": RELU, "Mish": RELU, "Softplus": RELU,
}
# A module whose output came straight out of one of these autograd nodes passed through that activation,
# whatever the module is (a block ending in `torch.tanh(...)` or `F.relu(...)`).
ACTIVATION_NODES: dict[str, str] = {
    "TanhBackward0": TANH, "SigmoidBackward0": SIGMOID,
    "ReluBackward0": RELU, "LeakyReluBackward0": RELU, "RreluWithNoiseBackward0": RELU,
    "PreluKernelBackward0": RELU, "GeluBackward0": RELU, "EluBackward0": RELU, "CeluBackward0": RELU,
    "SiluBackward0": RELU, "MishBackward0": RELU, "SoftplusBackward0": RELU,
}
# Modules that hand their input on unchanged (Dropout only zeroes and scales): their output inherits the
# "relu" kind of an input that came out of a ReLU-like function, since never-positive survives scaling.
PASS_THROUGH_TYPES = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                                "FeatureAlphaDropout", "Identity"})

Summary = Mapping[str, Any]  # a tensor summary of the trace format (norm, min, max, mean, zeros, numel, ...)


def step_health(calls: Sequence[Any], parameters: Sequence[tuple[str, torch.Tensor]], *, step: int,
                loss_terms: Mapping[str, float] | None = None, num_classes: Any = None,
                gradient_summaries: Mapping[str, Summary | None] | None = None,
                parameter_summaries: Mapping[str, Summary] | None = None) -> dict[str, Any]:
    """The `health` record of one step.

    `calls` are the tracker's `ModuleCall`s, their outputs described by an OutputProbe with health on (no
    probe: no activations, and a note); `parameters` are `(name, tensor)` pairs with `.grad` still set.
    `loss_terms` ({term: value}) and `num_classes` (an int for every term, or {term: int}, from
    `Recipe.extras["num_classes"]`) are used at step 1 only. The step recorder passes the summaries it
    already made (its `gradients` and `parameters`): norms, minima and maxima are then reused, not computed
    a second time.
    """
    notes: list[str] = []
    with torch.no_grad():
        layers, total = layer_statistics(parameters, gradient_summaries=gradient_summaries,
                                         parameter_summaries=parameter_summaries)
    activations = activation_statistics(calls, notes=notes)
    types = {call.path: call.module_type for call in calls}
    for layer, stats in layers.items():
        stats["type"] = types.get(layer)
    record: dict[str, Any] = {"layers": layers, "total": total, "activations": activations,
                              "memory": memory_usage(), "notes": notes}
    if step == 1:
        record["initial_loss"] = initial_loss(loss_terms or {}, num_classes, notes=notes)
    return record


def layer_of(parameter_name: str) -> str:
    """The module that owns a parameter: its path ("" for the root module)."""
    return parameter_name.rpartition(".")[0]


def layer_statistics(parameters: Sequence[tuple[str, torch.Tensor]], *,
                     gradient_summaries: Mapping[str, Summary | None] | None = None,
                     parameter_summaries: Mapping[str, Summary] | None = None,
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gradient norm, min, max, max-abs, zero share and weight norm per layer and for the whole network."""
    floats = [(name, p) for name, p in parameters if p.dtype in FLOAT_DTYPES and p.numel() > 0]
    if parameter_summaries is not None:
        weight_norms = [_summary_norm(parameter_summaries.get(name)) for name, _ in floats]
    else:
        weight_norms = [row[0] for row in _fetch([n.double().reshape(1) for n in _norms([p.detach() for _, p in floats])],
                                                 [p.device for _, p in floats])]
    grad_stats = (_summary_grad_stats(gradient_summaries) if gradient_summaries is not None
                  else _computed_grad_stats(floats))
    per_layer: dict[str, dict[str, Any]] = defaultdict(empty_layer)
    network = empty_layer()
    for (name, p), weight_norm in zip(floats, weight_norms):
        stats = grad_stats.get(name)
        for entry in (per_layer[layer_of(name)], network):
            entry["weight_sq"] += weight_norm ** 2
            entry["params"] += p.numel()
            if stats is None:
                continue
            entry["grad_sq"] += stats[0] ** 2
            entry["grad_min"] = fmin(entry["grad_min"], stats[1])
            entry["grad_max"] = fmax(entry["grad_max"], stats[2])
            entry["grad_zeros"] += int(stats[3])
            entry["grad_numel"] += p.numel()
    return {path: finish_layer(entry) for path, entry in per_layer.items()}, finish_layer(network)


def activation_statistics(calls: Sequence[Any], *, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Min, max, mean, std of every module output; saturation share and dead-unit share where they apply.

    The output probe summarised each output and counted saturated and dead units as the module returned
    (output_probe); a tensor returned unchanged by nested modules (a Sequential ending in its Tanh) is
    described once, under the innermost module. The std is the population std from the L2 norm and the
    mean (sqrt(E[y^2] - mean^2)): no extra pass, and precise enough to judge health.
    """
    if notes is not None and calls and not any(call.summaries for call in calls):
        notes.append("activation statistics need module outputs (capture.module_outputs is off)")
    entries = []
    for call in calls:
        for index in sorted(call.activation_kinds):
            kind = call.activation_kinds[index]
            summary = call.summaries[index]
            numel = int(summary["numel"])
            entry = {"module": call.output_name(index), "call": call.call, "type": call.module_type,
                     "kind": kind, "numel": numel}
            entry.update(moments(summary["min"], summary["max"], summary["mean"] * numel, summary["norm"], numel))
            counts = call.activation_counts.get(index)
            if counts is not None:
                saturated, dead, units = counts
                if kind in (TANH, SIGMOID):
                    entry["saturated_share"] = saturated / numel
                elif kind == RELU and units > 0:
                    entry["units"] = int(units)
                    entry["dead_units"] = int(dead)
                    entry["dead_share"] = dead / units
            entries.append(entry)
    return entries


def memory_usage() -> dict[str, Any]:
    """Memory now: process RSS, bytes malloc has handed out (glibc), CUDA where CUDA is already in use.

    RSS keeps memory the allocator has freed but not returned, so it wanders for a few steps in a healthy
    run; `heap_in_use` counts only live allocations (CPU tensors are malloc'd), like `cuda_allocated`.
    """
    rss, source = current_rss()
    memory: dict[str, Any] = {"rss": rss, "rss_source": source, "heap_in_use": heap_in_use(),
                              "cuda_allocated": None, "cuda_reserved": None}
    # is_initialized(): never start a CUDA context just to read zeros in a CPU run.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["cuda_allocated"] = int(torch.cuda.memory_allocated())
        memory["cuda_reserved"] = int(torch.cuda.memory_reserved())
    return memory


# -- parts ---------------------------------------------------------------------------------------------


def _norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if not tensors:
        return []
    widened = [t if t.dtype in (torch.float32, torch.float64) else t.float() for t in tensors]
    try:
        return list(torch._foreach_norm(widened))
    except RuntimeError:  # tensors on several devices in one call, on some torch versions
        return [torch.linalg.vector_norm(t) for t in widened]


def _fetch(rows: list[torch.Tensor], devices: list[torch.device]) -> list[list[float]]:
    """Rows of statistics as Python numbers: one stack and one `.tolist()` per device (one sync each)."""
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, device in enumerate(devices):
        by_device[device].append(i)
    values: list[list[float]] = [[] for _ in rows]
    for indices in by_device.values():
        for i, row in zip(indices, torch.stack([rows[i] for i in indices]).tolist()):
            values[i] = row
    return values


# Kinds as the native kernel numbers them (probes/common/native/summary.c).
_NATIVE_COUNT_KINDS = {TANH: 0, SIGMOID: 1, RELU: 2}


def activation_counts(tensor: torch.Tensor, kind: str) -> torch.Tensor | list[int]:
    """[saturated count, dead units, units] of one output of a tanh, sigmoid or relu kind: counted by the
    native kernel in one pass where it takes the tensor (a list), else by torch ops on its device."""
    native = _native_counts(tensor, kind)
    if native is not None:
        return native
    y = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
    nothing = torch.zeros((), dtype=torch.float64, device=y.device)
    saturated, dead, units = nothing, nothing, nothing
    if kind == TANH:
        saturated = torch.count_nonzero(y.abs() > TANH_SATURATION).double()
    elif kind == SIGMOID:
        saturated = torch.count_nonzero((y < SIGMOID_SATURATION) | (y > 1.0 - SIGMOID_SATURATION)).double()
    elif kind == RELU and y.dim() >= 1:
        # A unit (feature along the last dimension) is dead when it is never positive in the whole batch;
        # amax over the other dimensions is one fused reduction, cheaper than any() over a comparison.
        peaks = y.reshape(-1, y.shape[-1]).amax(dim=0)
        dead = torch.count_nonzero(peaks <= 0).double()
        units = torch.full((), float(peaks.numel()), dtype=torch.float64, device=y.device)
    return torch.stack([saturated, dead, units])


def _native_counts(tensor: torch.Tensor, kind: str) -> list[int] | None:
    if (tensor.dtype not in (torch.float32, torch.float64) or tensor.device.type != "cpu" or tensor.dim() == 0
            or not tensor.is_contiguous() or tensor.is_neg() or tensor.layout != torch.strided):
        return None
    native = kernel()
    if native is None:
        return None
    cols = tensor.shape[-1]
    rows = tensor.numel() // cols if cols else 0
    low, high = ((0.0, TANH_SATURATION) if kind == TANH else
                 (SIGMOID_SATURATION, 1.0 - SIGMOID_SATURATION) if kind == SIGMOID else (0.0, 0.0))
    return native.activation_counts(tensor.data_ptr(), rows, cols, kind=_NATIVE_COUNT_KINDS[kind], low=low,
                                    high=high, double=tensor.dtype == torch.float64)


def _summary_norm(summary: Summary | None) -> float:
    if not summary or summary.get("norm") is None:
        return 0.0
    return float(summary["norm"])


def _summary_grad_stats(summaries: Mapping[str, Summary | None]) -> dict[str, list[float]]:
    return {name: [s["norm"], s["min"], s["max"], s.get("zeros", 0)] for name, s in summaries.items()
            if s and s.get("norm") is not None}


def _computed_grad_stats(floats: Sequence[tuple[str, torch.Tensor]]) -> dict[str, list[float]]:
    with_grad = [(name, p.grad) for name, p in floats if p.grad is not None and not p.grad.is_sparse]
    rows = []
    for (_, grad), norm in zip(with_grad, _norms([g for _, g in with_grad])):
        low, high = torch.aminmax(grad)
        rows.append(torch.stack([norm.double(), low.double(), high.double(),
                                 (grad.numel() - torch.count_nonzero(grad)).double()]))
    return dict(zip([name for name, _ in with_grad], _fetch(rows, [g.device for _, g in with_grad])))


def output_kind(call: Any, index: int, types: Mapping[str, str]) -> str | None:
    """tanh, sigmoid or relu: by module type, else by the autograd node that produced the output."""
    kind = types.get(call.module_type)
    if kind is not None:
        return kind
    nodes = getattr(call, "output_nodes", [])
    # output_nodes lists only outputs with a grad_fn; it lines up with outputs only when all have one.
    if len(nodes) == call.n_outputs:
        kind = _node_kind(nodes[index])
        if kind is not None:
            return kind
    inputs = getattr(call, "input_nodes", [])
    if call.module_type in PASS_THROUGH_TYPES and len(inputs) == 1 and call.n_outputs == 1:
        inherited = _node_kind(inputs[0])
        # Dropout scales kept values by 1/(1-p): a saturation share would be wrong, a dead unit is not.
        if inherited == RELU or call.module_type == "Identity":
            return inherited
    return None


def _node_kind(node: Any) -> str | None:
    if node is None:
        return None
    return ACTIVATION_NODES.get(type(node).__name__) or ACTIVATION_NODES.get(node.name())



"""Training-health measurements of one torch step: the `health` key of a step record (docs/health.md).

Assembled at the end of a step from what the output probe counted as each module returned (output_probe):
activation kinds and saturated/dead-unit counts, which need the tensors, plus memory readings. Statistics
that the step record already implies (per-layer gradient norms, per-output moments) are derived when the
trace is read (`repro_audit.audit.trace.health_fill`). The rules that judge these numbers live in `repro_audit.audit.health`; this
module only measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from repro_audit.probes.common.health_numbers import (
    SIGMOID_SATURATION,
    TANH_SATURATION,
    current_rss,
    heap_in_use,
    initial_loss,
)
from repro_audit.probes.common.native_summary import kernel

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


def step_health(calls: Sequence[Any], *, step: int, loss_terms: Mapping[str, float] | None = None,
                num_classes: Any = None) -> dict[str, Any]:
    """The `health` record of one step, in its compact form (docs/health.md).

    `calls` are the tracker's `ModuleCall`s, their outputs described by an OutputProbe with health on (no
    probe: no activations, and a note). Per-layer and per-output statistics are not written: the trace
    reader derives them from the step's gradients, parameters and module outputs
    (`repro_audit.audit.trace.health_fill`). What only this moment knows is written: which outputs health describes
    (positions in the step's `module_outputs`), their activation kind and saturated/dead counts.
    `loss_terms` ({term: value}) and `num_classes` (an int for every term, or {term: int}, from
    `Recipe.extras["num_classes"]`) are used at step 1 only.
    """
    notes: list[str] = []
    if calls and not any(call.summaries for call in calls):
        notes.append("activation statistics need module outputs (capture.module_outputs is off)")
    described: list[int] = []
    kinds: list[dict[str, Any]] = []
    position = 0
    for call in calls:
        for index in sorted(call.activation_kinds):
            described.append(position + index)
            kind, counts = call.activation_kinds[index], call.activation_counts.get(index)
            if kind is not None and counts is not None:
                saturated, dead, units = counts
                kinds.append({"output": position + index, "kind": kind, "saturated": int(saturated),
                              "dead": int(dead), "units": int(units)})
        position += len(call.summaries)
    record: dict[str, Any] = {"described_outputs": described, "activation_kinds": kinds,
                              "memory": memory_usage(), "notes": notes}
    if step == 1:
        record["initial_loss"] = initial_loss(loss_terms or {}, num_classes, notes=notes)
    return record


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
                                    high=high, double=tensor.dtype == torch.float64, threads=torch.get_num_threads())


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


# The kind of each autograd node type met so far: asked after every module call, and `name()` builds a
# new string each time. Only a type whose name is its nodes' name is kept (every generated node type
# and Python Function is one); the cache starts over past a bound, as Functions can be made on the fly.
_KIND_OF_NODE_TYPE: dict[type, str | None] = {}
_NODE_TYPE_CACHE_LIMIT = 4096


def _node_kind(node: Any) -> str | None:
    if node is None:
        return None
    node_type = type(node)
    if node_type in _KIND_OF_NODE_TYPE:
        return _KIND_OF_NODE_TYPE[node_type]
    name = node.name()
    kind = ACTIVATION_NODES.get(node_type.__name__) or ACTIVATION_NODES.get(name)
    if node_type.__name__ == name:
        if len(_KIND_OF_NODE_TYPE) >= _NODE_TYPE_CACHE_LIMIT:
            _KIND_OF_NODE_TYPE.clear()
        _KIND_OF_NODE_TYPE[node_type] = kind
    return kind



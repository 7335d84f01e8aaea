"""The derived half of a step's `health` record, filled in when a trace is read (docs/health.md).

Per-layer gradient and weight statistics and per-output activation statistics are arithmetic over what
the step record already holds (`gradients`, `parameters`, `module_outputs`). The torch probe therefore
writes only what cannot be derived: which outputs health describes, their activation kind and
saturated/dead counts, memory and notes. Writing the rest at every step cost about 4 ms of a 300 ms step
(building it and encoding a quarter of the record again). A record that already holds `layers` (the TF
probes, traces written before) is left as it is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from repro_audit.probes.common.health_numbers import empty_layer, finish_layer, fmax, fmin, moments

TANH, SIGMOID, RELU = "tanh", "sigmoid", "relu"
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
# Keys of the compact record, replaced by the derived ones.
COMPACT_KEYS = ("described_outputs", "activation_kinds")


def complete_health(record: Mapping[str, Any], module_types: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The step's full `health` (None where it has none); `module_types` ({module path: type}, from
    structure.json) names the type of each layer and output."""
    health = record.get("health")
    if not isinstance(health, dict):
        return None
    if "layers" in health:
        return health
    types = module_types or {}
    full = {key: value for key, value in health.items() if key not in COMPACT_KEYS}
    layers, total = layer_statistics(record.get("gradients") or {}, record.get("parameters") or {})
    for layer, stats in layers.items():
        stats["type"] = types.get(layer)
    full["layers"], full["total"] = layers, total
    full["activations"] = activation_statistics(record.get("module_outputs") or [],
                                                health.get("described_outputs") or [],
                                                health.get("activation_kinds") or [], types)
    return full


def layer_of(parameter_name: str) -> str:
    """The module that owns a parameter: its path ("" for the root module)."""
    return parameter_name.rpartition(".")[0]


def layer_statistics(gradients: Mapping[str, Any], parameters: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gradient norm, min, max, max-abs, zero share and weight norm per layer and for the whole network,
    from the parameter and gradient summaries of the step (parameters in creation order)."""
    per_layer: dict[str, dict[str, Any]] = defaultdict(empty_layer)
    network = empty_layer()
    for name, summary in parameters.items():
        if not summary or summary.get("dtype") not in FLOAT_DTYPES or not summary.get("numel"):
            continue
        numel = int(summary["numel"])
        weight_norm = float(summary["norm"]) if summary.get("norm") is not None else 0.0
        grad: Mapping[str, Any] = gradients.get(name) or {}
        for entry in (per_layer[layer_of(name)], network):
            # x * x, not x ** 2: a float64 norm past 1e154 squares to inf instead of raising OverflowError.
            entry["weight_sq"] += weight_norm * weight_norm
            entry["params"] += numel
            if grad.get("norm") is None:  # no gradient reached this parameter
                continue
            entry["grad_sq"] += grad["norm"] * grad["norm"]
            entry["grad_min"] = fmin(entry["grad_min"], grad["min"])
            entry["grad_max"] = fmax(entry["grad_max"], grad["max"])
            entry["grad_zeros"] += int(grad.get("zeros") or 0)
            entry["grad_numel"] += numel
    return {path: finish_layer(entry) for path, entry in per_layer.items()}, finish_layer(network)


def activation_statistics(outputs: Sequence[Mapping[str, Any]], described: Sequence[int],
                          kinds: Sequence[Mapping[str, Any]], types: Mapping[str, str]) -> list[dict[str, Any]]:
    """Min, max, mean, std of every described output; saturation or dead-unit share where a kind applies.

    The std is the population std from the L2 norm and the mean (sqrt(E[y^2] - mean^2)): no extra pass
    over the tensor, and precise enough to judge health.
    """
    by_output = {int(entry["output"]): entry for entry in kinds}
    entries = []
    for position in described:
        output = outputs[position]
        summary = output["summary"]
        numel = int(summary["numel"])
        found = by_output.get(position, {})
        kind = found.get("kind")
        entry: dict[str, Any] = {"module": output["module"], "call": output["call"],
                                 "type": types.get(_module_path(output["module"])), "kind": kind, "numel": numel}
        entry.update(moments(summary["min"], summary["max"], summary["mean"] * numel, summary["norm"], numel))
        if kind in (TANH, SIGMOID):
            entry["saturated_share"] = found["saturated"] / numel
        elif kind == RELU and found.get("units"):
            entry["units"] = int(found["units"])
            entry["dead_units"] = int(found["dead"])
            entry["dead_share"] = found["dead"] / found["units"]
        entries.append(entry)
    return entries


def module_types(structure: Mapping[str, Any]) -> dict[str, str]:
    """{module path: type name} from a trace's structure.json."""
    return {str(module["path"]): str(module["type"]) for module in structure.get("modules") or []
            if isinstance(module, Mapping) and "path" in module and "type" in module}


def _module_path(output_name: str) -> str:
    """`decoder.block[1]` (the second output of a call) belongs to module `decoder.block`."""
    return output_name.rpartition("[")[0] if output_name.endswith("]") else output_name


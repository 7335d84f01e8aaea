"""Turn one step's packed summaries into a steps.jsonl record (docs/trace-format.md), for every TF mode."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from repro_audit.probes.common.hashing import hash_text
from repro_audit.probes.tf.bundle_hashes import hashes_and_stats
from repro_audit.probes.tf.tensors import named_tensors, summary_of_kernel, to_numpy


def batch_record(batch: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The batch fingerprint and its values (numpy), before the step runs.

    Hashed and reduced by the native kernel in one pass, as the step's own tensors are: numpy's separate
    passes over a 1.5 MB image batch took 1 ms of a 45 ms Keras step."""
    tensors = [(name, np.asarray(to_numpy(value))) for name, value in named_tensors(batch)]
    if not tensors:
        return {"hash": hash_text(repr(batch)), "tensors": {}}, {}
    arrays = [np.ascontiguousarray(array) for _, array in tensors]
    digests, reduced = hashes_and_stats(arrays, [True] * len(arrays))
    summaries = {name: summary_of_kernel(stats, array, array.dtype.name, digest, name)
                 for (name, _), array, digest, stats in zip(tensors, arrays, digests, reduced)}
    combined = hash_text("|".join(f"{name}={summaries[name]['hash']}" for name, _ in tensors))
    return {"hash": combined, "tensors": summaries}, dict(tensors)


def assemble(step: int, *, batch: dict[str, Any], summaries: Mapping[str, dict[str, Any]],
             values: Mapping[str, np.ndarray], term_names: Sequence[str], weights: Mapping[str, float],
             parameter_names: Sequence[str], optimizer: Any) -> dict[str, Any]:
    """Everything of a step record that comes from the step's own outputs."""
    record: dict[str, Any] = {"step": step, "batch": batch, "notes": []}
    record["loss_terms"] = {name: {"weight": weights[name], "value": _number(values[f"loss_terms/{name}"]),
                                   "hash": summaries[f"loss_terms/{name}"]["hash"]} for name in term_names}
    record["total_loss"] = _number(values["total"])
    record["gradients"] = {name: summaries.get(f"gradients/{name}") for name in parameter_names}
    record["parameters"] = {name: summaries[f"parameters/{name}"] for name in parameter_names}
    buffers = {key[len("buffers/"):]: summary for key, summary in summaries.items() if key.startswith("buffers/")}
    if buffers:
        record["buffers"] = buffers
    record["module_outputs"] = [_module_output(key, summary) for key, summary in summaries.items()
                                if key.startswith("module_outputs/")]
    state: dict[str, dict[str, Any]] = {}
    scalars: dict[str, Any] = {}
    names = set(parameter_names)  # a set: some 300 slots are looked up among some 150 names every step
    for key, summary in summaries.items():
        if not key.startswith("optimizer/"):
            continue
        rest = key[len("optimizer/"):]
        param, _, slot = rest.rpartition("/")
        if param in names:
            state.setdefault(param, {})[slot] = summary["hash"]
        else:
            scalars[rest] = _number(values[key])
    lr = _number(values["optimizer_lr"]) if "optimizer_lr" in values else None
    record["optimizer"] = {"type": type(optimizer.optimizer).__name__,
                           "param_groups": optimizer.param_groups(list(parameter_names), lr),
                           "state": dict(sorted(state.items())), "scalars": scalars}
    return record


def kept_values(step: int, values: Mapping[str, np.ndarray], batch_values: Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
    """What values/step_NNNNN.safetensors holds: gradients, parameters, layer outputs, terms, batch."""
    kept = {}
    for key, array in values.items():
        if key.startswith(("gradients/", "parameters/", "module_outputs/")):
            kept[key] = np.ascontiguousarray(array)
        elif key.startswith("loss_terms/"):
            kept[key] = np.asarray(array).reshape(1)
    for name, array in batch_values.items():
        kept[f"batch/{name}"] = np.ascontiguousarray(array)
    return kept


def nonfinite_parameters(summaries: Mapping[str, dict[str, Any]], prefix: str) -> list[str]:
    return [key[len(prefix):] for key, summary in summaries.items()
            if key.startswith(prefix) and summary and (summary["nan"] or summary["inf"])]


def _module_output(key: str, summary: dict[str, Any]) -> dict[str, Any]:
    module, _, call = key[len("module_outputs/"):].rpartition("#")
    return {"module": module, "call": int(call), "summary": summary}


def _number(value: Any) -> float | int | str:
    array = np.asarray(value)
    number = array.reshape(-1)[0].item() if array.size else float("nan")
    if isinstance(number, float) and not math.isfinite(number):
        return number  # json writes NaN / Infinity, as the schema says
    return number

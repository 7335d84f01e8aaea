"""Hyper-parameters of every param group and hashes of the optimizer state, per parameter name."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from probes.torch.tensors import tensor_hash


def param_groups(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> list[dict[str, Any]]:
    groups = []
    for group in optimizer.param_groups:
        record: dict[str, Any] = {"params": [names.get(id(p), "<unnamed>") for p in group["params"]]}
        for key, value in group.items():
            if key != "params":
                record[key] = _plain(value)
        groups.append(record)
    return groups


def state_hashes(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> dict[str, dict[str, Any]]:
    states: dict[str, dict[str, Any]] = {}
    for param, state in optimizer.state.items():
        name = names.get(id(param))
        if name is None:
            continue
        states[name] = {key: _plain(value) for key, value in state.items()}
    return dict(sorted(states.items()))


def _plain(value: Any) -> Any:
    """JSON-able form: tensors become their scalar or their hash, containers recurse."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            number = value.item()
            return number if not isinstance(number, float) or math.isfinite(number) else str(number)
        return tensor_hash(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)

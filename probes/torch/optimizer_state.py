"""Hyper-parameters of every param group and hashes of the optimizer state, per parameter name."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from repro_audit.probes.torch.distributed import gathered
from repro_audit.probes.torch.repeated_summaries import RepeatedSummaries
from repro_audit.probes.torch.tensors import tensor_hashes


def param_groups(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> list[dict[str, Any]]:
    groups = []
    for group in optimizer.param_groups:
        record: dict[str, Any] = {"params": [names.get(id(p), "<unnamed>") for p in group["params"]]}
        for key, value in group.items():
            if key != "params":
                record[key] = _plain(value)
        groups.append(record)
    return groups


class StateHashes:
    """Hashes of the optimizer state, per parameter name, at every step.

    Adam keeps two tensors of each parameter's size: this reads more memory than anything else a step
    records, so the hashing goes through `RepeatedSummaries` (one kernel call whose arguments are made
    once), and the common state (tensors and plain numbers, one level deep) is walked in one loop.
    """

    def __init__(self) -> None:
        self._hashes = RepeatedSummaries(hash_only=True)

    def __call__(self, optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> dict[str, dict[str, Any]]:
        named = sorted(((name, state) for param, state in optimizer.state.items()
                        if (name := names.get(id(param))) is not None), key=lambda item: item[0])
        tensors: list[torch.Tensor] = []
        scalars: list[torch.Tensor] = []  # one-element tensors (Adam's step)
        for _, state in named:
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    (scalars if value.numel() == 1 else tensors).append(value)
                elif isinstance(value, (list, tuple, dict)):
                    _collect_tensors(value, tensors)
        shown: dict[int, Any] = dict(zip(map(id, tensors), self._hashes.hashes(tensors)))
        shown.update((id(t), _finite_or_text(gathered(t).item())) for t in scalars)
        return {name: {str(key): shown[id(value)] if id(value) in shown else _plain(value, shown)
                       for key, value in state.items()} for name, state in named}


def _finite_or_text(number: Any) -> Any:
    return number if not isinstance(number, float) or math.isfinite(number) else str(number)


def _collect_tensors(value: Any, found: list[torch.Tensor]) -> None:
    """The tensors of more than one element that `_plain` will show by their hash."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            found.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_tensors(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_tensors(item, found)


def _plain(value: Any, hashes: Mapping[int, str] | None = None) -> Any:
    """JSON-able form: tensors become their scalar or their hash (from `hashes` where given), containers
    recurse."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return _finite_or_text(value.item())
        return (hashes or {}).get(id(value)) or tensor_hashes([value])[0]
    if isinstance(value, (list, tuple)):
        return [_plain(item, hashes) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item, hashes) for key, item in value.items()}
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)

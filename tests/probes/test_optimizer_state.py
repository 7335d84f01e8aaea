"""Optimizer state hashes, per parameter name: tensors by their hash, scalars by their value."""

from __future__ import annotations

import torch

from repro_audit.probes.torch.optimizer_state import StateHashes
from repro_audit.probes.torch.tensors import tensor_hash


def reference(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """What the trace must hold, one value at a time."""
    def shown(value):
        if isinstance(value, torch.Tensor):
            return value.item() if value.numel() == 1 else tensor_hash(value)
        if isinstance(value, (list, tuple)):
            return [shown(item) for item in value]
        return value
    return {names[id(p)]: {key: shown(value) for key, value in state.items()}
            for p, state in sorted(optimizer.state.items(), key=lambda item: names[id(item[0])])}


def trained(optimizer_type, **options) -> tuple[torch.optim.Optimizer, dict[int, str]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    optimizer = optimizer_type(model.parameters(), **options)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
    return optimizer, {id(p): name for name, p in model.named_parameters()}


def test_state_of_common_optimizers_as_read_one_value_at_a_time() -> None:
    hashes = StateHashes()
    for optimizer_type, options in ((torch.optim.Adam, {}), (torch.optim.AdamW, {"amsgrad": True}),
                                    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Rprop, {})):
        optimizer, names = trained(optimizer_type, **options)
        for _ in range(2):  # the second time through the prepared batch
            assert hashes(optimizer, names) == reference(optimizer, names), optimizer_type.__name__
        first = next(iter(optimizer.state.values()))
        for value in first.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                value.add_(1.0)  # changed in place: a new hash
        assert hashes(optimizer, names) == reference(optimizer, names)


def test_scalars_of_several_dtypes_and_non_finite_ones() -> None:
    optimizer, names = trained(torch.optim.Adam)
    first, second = list(optimizer.state.values())[:2]
    first["step"] = torch.tensor(3, dtype=torch.int64)
    second["step"] = torch.tensor(float("inf"))
    second["history"] = [torch.ones(3), 2]
    found = StateHashes()(optimizer, names)
    by_state = {id(state): name for name, state in zip(
        [names[id(p)] for p in optimizer.state], optimizer.state.values())}
    assert found[by_state[id(first)]]["step"] == 3 and type(found[by_state[id(first)]]["step"]) is int
    assert found[by_state[id(second)]]["step"] == "inf"
    assert found[by_state[id(second)]]["history"] == [tensor_hash(torch.ones(3)), 2]

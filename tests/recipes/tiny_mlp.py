"""Tiny real recipes for recorder and runner tests (milliseconds per step)."""

from __future__ import annotations

import gc
import time

import torch

from repro_audit import Recipe


def _data(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator))
            for _ in range(n)]


def build(params: dict) -> Recipe:
    """An MLP with dropout; `extra_branch` adds a zero-weight-able head created before the output layer."""
    layers: list[torch.nn.Module] = [torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.1)]
    model = torch.nn.Sequential(*layers)
    if params.get("extra_branch"):
        model.add_module("extra", torch.nn.Linear(8, 2))
    model.add_module("out", torch.nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=params.get("lr", 1e-2))

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        hidden = model[2](model[1](model[0](x)))
        terms = {"ce": torch.nn.functional.cross_entropy(model.out(hidden), y)}
        if params.get("extra_branch"):
            terms["extra"] = model.extra(hidden).pow(2).mean()
        return terms

    return Recipe(model=model, optimizer=optimizer, batches=_data(params.get("batches", 10)), loss=loss)


def build_masked_entropy(params: dict) -> Recipe:
    """The seed's NaN case in torch: 0.0 x entropy of a -inf-masked softmax still sends NaN to the weights."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 15))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = torch.arange(15) < 10

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, _ = batch
        logits = model(x).masked_fill(~mask, float("-inf"))
        entropy = -torch.where(mask, logits.softmax(-1) * logits.log_softmax(-1), 0.0).sum(-1).mean()
        return {"ce": model(x).pow(2).mean(), "entropy": entropy}

    return Recipe(model=model, optimizer=optimizer, batches=_data(5), loss=loss)


def build_crashing(params: dict) -> Recipe:
    recipe = build(params)
    inner = recipe.loss

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        if step == 2:
            raise RuntimeError("synthetic failure at step 2")
        return inner(model, batch)

    recipe.loss = loss
    return recipe


def build_hanging(params: dict) -> Recipe:
    recipe = build(params)
    inner = recipe.loss

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        if step == 2:
            time.sleep(3600)
        return inner(model, batch)

    recipe.loss = loss
    return recipe


def build_wrong_return(params: dict) -> list[int]:
    return [1, 2, 3]


def build_non_scalar_loss(params: dict) -> Recipe:
    recipe = build(params)
    recipe.loss = lambda model, batch: {"ce": model.out(model[0](batch[0]))}
    return recipe


def build_showing_collector(params: dict) -> Recipe:
    """`build`, after writing the collector's state to the run's log
    (tests/probes/test_collector_pause.py)."""
    print(f"collector enabled={gc.isenabled()} frozen={gc.get_freeze_count()}", flush=True)
    return build(params)

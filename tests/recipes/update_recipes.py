"""Recipes that use the update part of the protocol: micro-batches, a GradScaler, clipping, a hook."""

from __future__ import annotations

from typing import Any

import torch

from repro_audit import Recipe


def build(params: dict[str, Any]) -> Recipe:
    """An MLP trained over two micro-batches per step, through a CPU GradScaler, clipped, with a hook that
    rescales the gradients by `hook_scale` and reports it."""
    torch_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                      torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 4, generator=generator), torch.randint(0, 3, (6,), generator=generator))
               for _ in range(12)]
    scale = params.get("hook_scale", 1.0)

    def loss(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"ce": torch.nn.functional.cross_entropy(model(x), y)}

    def before_optimizer_step(*, model: torch.nn.Module, optimizer: Any, step: int) -> dict[str, Any]:
        for parameter in model.parameters():
            parameter.grad.mul_(scale)
        return {"gradient_multiplier": scale}

    return Recipe(model=torch_model, optimizer=optimizer, batches=batches, loss=loss,
                  micro_batches=params.get("micro_batches", 2), clip_grad_norm=params.get("clip", 0.5),
                  grad_scaler=torch.amp.GradScaler("cpu", init_scale=256.0),
                  before_optimizer_step=before_optimizer_step)


def compiled(params: dict[str, Any]) -> Recipe:
    """A model through torch.compile: refused, plainly."""
    model = torch.compile(torch.nn.Linear(4, 3))
    return Recipe(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  batches=[(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))] * 3,
                  loss=lambda model, batch: {"ce": torch.nn.functional.cross_entropy(model(batch[0]), batch[1])})

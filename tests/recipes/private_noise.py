"""A module created before the shared ones that draws from a generator of its own at every step: its
build moves the shared layers' seed offsets, its draws move no shared draw."""

from __future__ import annotations

from typing import Any

import torch

from repro_audit import Recipe


class Noisy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Linear(4, 4)
        self.generator = torch.Generator().manual_seed(11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(x + torch.rand(x.shape, generator=self.generator))


def build(params: dict[str, Any]) -> Recipe:
    model = torch.nn.ModuleDict({"noisy": Noisy()} if params.get("noisy") else {})
    model["body"] = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 4, generator=generator), torch.randint(0, 3, (6,), generator=generator))
               for _ in range(3)]

    def loss(model: torch.nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        terms = {"ce": torch.nn.functional.cross_entropy(model["body"](x), y)}
        if "noisy" in model:
            terms["noise"] = model["noisy"](x).pow(2).mean()
        return terms

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)

"""A head that exists in both runs and that only a zero-weighted term reaches, trained with weight decay
(AdamW's decoupled decay, or with `optimizer: sgd` SGD's L2 decay added to the gradient)."""

from __future__ import annotations

from typing import Any

import torch

from repro_audit import Recipe


def build(params: dict[str, Any]) -> Recipe:
    body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = torch.nn.ModuleDict({"body": body, "probe": torch.nn.Linear(8, 1)})
    if params.get("optimizer") == "sgd":  # L2 decay added to the gradient, momentum on top
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                                           weight_decay=0.1)
    else:  # decoupled decay
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 4, generator=generator), torch.randint(0, 3, (6,), generator=generator))
               for _ in range(4)]

    def loss(model: torch.nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        hidden = model["body"][1](model["body"][0](x))
        terms = {"ce": torch.nn.functional.cross_entropy(model["body"][2](hidden), y)}
        if params.get("probe_term"):
            terms["probe"] = model["probe"](hidden.detach()).pow(2).mean()
        return terms

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)

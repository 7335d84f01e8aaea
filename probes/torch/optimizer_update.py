"""The runner's part of a step between backward and the optimizer: what a real training loop does there.

Unscaling a GradScaler's gradients, clipping, and the recipe's own `before_optimizer_step` change what
the optimizer receives; each is done here, in that order, and its settings go into the step record's
`update`, so a changed clip norm shows as a changed hyper-parameter and never as nondeterminism.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from repro_audit.audit.errors import RunFailed
from repro_audit.audit.recipe import Recipe


def scaled_for_backward(recipe: Recipe, total: torch.Tensor) -> torch.Tensor:
    return recipe.grad_scaler.scale(total) if recipe.grad_scaler is not None else total


def prepare_update(recipe: Recipe, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                   spec: str) -> dict[str, Any]:
    """Unscale, clip and run the recipe's hook; returns the facts for the step record's `update`."""
    facts: dict[str, Any] = {}
    if recipe.micro_batches != 1:
        facts["micro_batches"] = recipe.micro_batches
    if recipe.grad_scaler is not None:
        recipe.grad_scaler.unscale_(optimizer)
        facts["grad_scale"] = _number(recipe.grad_scaler.get_scale())
    with_grad = [p for p in model.parameters() if p.grad is not None]
    if recipe.clip_grad_value is not None:
        torch.nn.utils.clip_grad_value_(with_grad, recipe.clip_grad_value)
        facts["clip_grad_value"] = float(recipe.clip_grad_value)
    if recipe.clip_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(with_grad, recipe.clip_grad_norm)
        facts["clip_grad_norm"] = float(recipe.clip_grad_norm)
        facts["grad_norm"] = _number(norm)
    if recipe.before_optimizer_step is not None:
        returned = recipe.before_optimizer_step(model=model, optimizer=optimizer, step=step)
        if returned is not None:
            if not isinstance(returned, Mapping):
                raise RunFailed(f"recipe {spec}: before_optimizer_step returned {type(returned).__name__}; "
                                f"expected None or a mapping of facts")
            facts["hook"] = {str(key): _plain(value, spec) for key, value in returned.items()}
    return facts


def optimizer_step(recipe: Recipe, optimizer: torch.optim.Optimizer) -> None:
    if recipe.grad_scaler is not None:
        recipe.grad_scaler.step(optimizer)
        recipe.grad_scaler.update()
    else:
        optimizer.step()


def _number(value: Any) -> float | str:
    number = float(value)
    return number if math.isfinite(number) else str(number)


def _plain(value: Any, spec: str) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _number(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return _number(value) if isinstance(value, float) else value
    if isinstance(value, (list, tuple)):
        return [_plain(item, spec) for item in value]
    raise RunFailed(f"recipe {spec}: before_optimizer_step returned a {type(value).__name__}; facts must be "
                    f"numbers, strings, booleans or lists of them")

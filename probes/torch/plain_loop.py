"""The recipe's training loop without the recorder's probes, for runs that watch ops instead (ops, zoom).

Same order as the recorder's loop (probes/torch/recorder.py): seed, build, then per step zero_grad,
forward and backward per micro-batch, unscale/clip/hook, optimizer step, scheduler. A watcher is told where
each phase starts, so it can switch its instrumentation on and off around exactly what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.recipe import (
    Recipe,
    as_recipe,
    call_recipe,
    loss_takes_step,
    resolve_recipe,
    step_batches,
)
from repro_audit.probes.torch import require_torch


class StepWatcher(Protocol):
    def around_step(self, step: int) -> AbstractContextManager[Any]: ...

    def forward_done(self, terms: dict[str, Any]) -> None: ...

    def backward_done(self, terms: dict[str, Any]) -> None: ...

    def optimizer_starts(self) -> None: ...


def build_recipe(config: RunConfig) -> Recipe:
    require_torch()
    import torch

    torch.manual_seed(config.seed)
    build = resolve_recipe(config.recipe, config_dir=Path(config.config_dir) if config.config_dir else None)
    recipe = as_recipe(call_recipe(build, config.params, spec=config.recipe, data_order_seed=config.data_order_seed),
                       spec=config.recipe)
    if not isinstance(recipe.model, torch.nn.Module):
        raise RunFailed(f"recipe {config.recipe}: 'model' must be a torch.nn.Module, got "
                        f"{type(recipe.model).__name__}")
    return recipe


def run_steps(config: RunConfig, recipe: Recipe, *, steps: int, watcher: StepWatcher | None,
              progress: Callable[[int], None], trained: Any = None) -> int:
    """Train `steps` steps; returns how many finished. `trained`: what the forward goes through when it is not
    the recipe's model itself (its DDP wrapper); hooks and the optimizer still see the recipe's model."""
    from repro_audit.probes.torch.optimizer_update import optimizer_step, prepare_update, scaled_for_backward

    model, optimizer = recipe.model, recipe.optimizer
    batches = step_batches(recipe.batches, steps=steps, spec=config.recipe, per_step=recipe.micro_batches)
    model.train()
    done = 0
    for step in range(1, steps + 1):
        batch = next(batches)
        micro = batch if recipe.micro_batches > 1 else [batch]
        optimizer.zero_grad(set_to_none=True)
        with watcher.around_step(step) if watcher is not None else nullcontext():
            for part in micro:
                forward = model if trained is None else trained
                terms = recipe.loss(forward, part, step=step) if loss_takes_step(recipe.loss) else recipe.loss(
                    forward, part)
                total = weighted_total(config, terms, scale=1.0 / len(micro))
                if watcher is not None:
                    watcher.forward_done(dict(terms))
                scaled_for_backward(recipe, total).backward()
                if watcher is not None:
                    watcher.backward_done(dict(terms))
            if watcher is not None:
                watcher.optimizer_starts()
            prepare_update(recipe, model=model, optimizer=optimizer, step=step, spec=config.recipe)
            optimizer_step(recipe, optimizer)
            if recipe.lr_scheduler is not None:
                recipe.lr_scheduler.step()
        done = step
        progress(step)
    return done


def weighted_total(config: RunConfig, terms: Any, *, scale: float) -> Any:
    """scale x sum(weight x term), as the recorder forms it."""
    if not hasattr(terms, "items") or not terms:
        raise RunFailed(f"recipe {config.recipe}: the loss function must return a non-empty mapping of named "
                        f"terms, got {type(terms).__name__}")
    total = None
    for name, value in terms.items():
        weighted = value * config.weight_for(str(name))
        total = weighted if total is None else total + weighted
    return total * scale

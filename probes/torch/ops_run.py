"""`repro-audit ops` for torch: the recipe's training steps with every op executed twice (op_recheck).

Runs in the worker like `record`, and writes what it found to ops.json in the trace folder: the ops whose
two executions differed, each with step, phase, module, source line, loss terms, dtype/shape and distance,
and the ops known to be nondeterministic on the device in use. Nothing else of the run is recorded: the
point is one run that lists every nondeterministic op, not a trace to compare.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit.config import RunConfig
from audit.errors import RunFailed
from audit.recipe import as_recipe, loss_takes_step, resolve_recipe, step_batches
from audit.trace import TraceWriter
from probes.torch import require_torch

OPS_FILE = "ops.json"


def record_ops(config: RunConfig, writer: TraceWriter, *, progress: Callable[[int], None]) -> None:
    require_torch()
    import torch

    from probes.torch.op_recheck import OpRecheckMode
    from probes.torch.op_sites import ModuleStack
    from probes.torch.optimizer_update import optimizer_step, prepare_update, scaled_for_backward

    torch.manual_seed(config.seed)
    build = resolve_recipe(config.recipe, config_dir=Path(config.config_dir) if config.config_dir else None)
    recipe = as_recipe(build(dict(config.params)), spec=config.recipe)
    model, optimizer = recipe.model, recipe.optimizer
    if not isinstance(model, torch.nn.Module):
        raise RunFailed(f"recipe {config.recipe}: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    modules = ModuleStack(model)
    mode = OpRecheckMode(module_of=modules.current)
    batches = step_batches(recipe.batches, steps=config.steps, spec=config.recipe, per_step=recipe.micro_batches)
    model.train()
    steps_done = 0
    try:
        for step in range(1, config.steps + 1):
            batch = next(batches)
            micro = batch if recipe.micro_batches > 1 else [batch]
            optimizer.zero_grad(set_to_none=True)
            mode.step = step
            with mode:
                for part in micro:
                    mode.phase = "forward"
                    terms = recipe.loss(model, part, step=step) if loss_takes_step(recipe.loss) else recipe.loss(
                        model, part)
                    total = _weighted_total(config, terms, scale=1.0 / len(micro))
                    mode.finish_forward()
                    scaled_for_backward(recipe, total).backward()
                    mode.attribute_loss_terms(dict(terms))
                mode.phase = "optimizer"
                prepare_update(recipe, model=model, optimizer=optimizer, step=step, spec=config.recipe)
                optimizer_step(recipe, optimizer)
                if recipe.lr_scheduler is not None:
                    recipe.lr_scheduler.step()
            mode.end_step()
            steps_done = step
            progress(step)
    finally:
        modules.close()
        writer.write_json(OPS_FILE, ops_record(mode, steps=steps_done, device=_device_of(model)))


def ops_record(mode: Any, *, steps: int, device: str) -> dict[str, Any]:
    """What ops.json holds: plain data, in the order the ops ran."""
    import torch

    cudnn = torch.backends.cudnn
    return {
        "framework": "torch",
        "torch_version": torch.__version__,
        "device": device,
        "steps": steps,
        "ops_checked": mode.ops_checked,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn": {"enabled": bool(cudnn.enabled), "deterministic": bool(cudnn.deterministic),
                  "benchmark": bool(cudnn.benchmark)} if device == "cuda" else None,
        "disagreements": [item.to_dict() for item in mode.disagreements],
        "known": list(mode.known.values()),
    }


def _weighted_total(config: RunConfig, terms: Any, *, scale: float) -> Any:
    if not hasattr(terms, "items") or not terms:
        raise RunFailed(f"recipe {config.recipe}: the loss function must return a non-empty mapping of named "
                        f"terms, got {type(terms).__name__}")
    total = None
    for name, value in terms.items():
        weighted = value * config.weight_for(str(name))
        total = weighted if total is None else total + weighted
    return total * scale


def _device_of(model: Any) -> str:
    for parameter in model.parameters():
        return str(parameter.device.type)
    return "cpu"

"""Record a config's run with torch: seed, build under capture, run the steps, write the trace."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

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
from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.torch import require_torch


def record_run(config: RunConfig, writer: TraceWriter, *, progress: Callable[..., None]) -> None:
    """The runner's loop: the recipe builds, repro-audit trains and records."""
    require_torch()
    if config.nproc:
        from repro_audit.probes.torch.distributed import join_process_group, leave_process_group

        ranks = join_process_group()  # before the build: the recipe may shard its data by rank
        try:
            _record(config, writer, progress=progress, ranks=ranks)
        finally:
            leave_process_group()
    else:
        _record(config, writer, progress=progress, ranks=None)


def _record(config: RunConfig, writer: TraceWriter, *, progress: Callable[..., None],
            ranks: dict[str, Any] | None) -> None:
    import torch

    from repro_audit.probes.torch.compiled import compiled_frames, refuse_compiled_model, refuse_compiled_step
    from repro_audit.probes.torch.dispatch_capture import DispatchCapture
    from repro_audit.probes.torch.initialisation import initialisation_record
    from repro_audit.probes.torch.interventions import TorchInterventions, generator_states
    from repro_audit.probes.torch.modules import module_tree
    from repro_audit.probes.torch.optimizer_update import optimizer_step, prepare_update, scaled_for_backward
    from repro_audit.probes.torch.random_ledger import RandomLedger
    from repro_audit.probes.torch.step_recorder import TorchStepRecorder
    from repro_audit.probes.torch.tensors import values_for_file

    torch.manual_seed(config.seed)  # the same seed on every rank, as DDP's users do
    build = resolve_recipe(config.recipe, config_dir=Path(config.config_dir) if config.config_dir else None)
    ledger = RandomLedger(module_of=lambda: None)
    capture = DispatchCapture(ledger, lambda: None, record_ops=False, track_storage=True)
    with capture:
        returned = call_recipe(build, config.params, spec=config.recipe,
                                   data_order_seed=config.data_order_seed)
    recipe = as_recipe(returned, spec=config.recipe)
    model, optimizer = recipe.model, recipe.optimizer
    if not isinstance(model, torch.nn.Module):
        raise RunFailed(f"recipe {config.recipe}: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise RunFailed(f"recipe {config.recipe}: 'optimizer' must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    refuse_compiled_model(model, where=f"recipe {config.recipe}")
    environment = _environment(config, ranks)
    writer.write_json(fmt.ENVIRONMENT, environment())
    writer.write_json(fmt.INITIALISATION, initialisation_record(model, capture, ledger.take_entries(),
                                                                 seed=config.seed))
    structure: dict[str, Any] = {"modules": module_tree(model), "graph_steps": []}
    writer.write_json(fmt.STRUCTURE, structure)
    interventions = TorchInterventions(config.interventions)
    interventions.load_initial_values(model)
    if config.capture.get("values", "none") != "none":
        # The generators' state after build too: `--verify` starts run B's training from run A's.
        writer.write_values(0, {**{f"initial/{name}": values_for_file(t) for name, t in model.state_dict().items()},
                                **generator_states()})
    interventions.set_generators()

    sharded = ranks is not None and config.launch.get("wrap") == "fsdp"
    if sharded:  # FSDP2 swaps the parameters for sharded ones: the optimizer is rebuilt over those
        from repro_audit.probes.torch.distributed import shard_with_fsdp

        optimizer = recipe.optimizer = shard_with_fsdp(model, optimizer)
    recorder = TorchStepRecorder(model, optimizer, capture=config.capture, weight_of=config.weight_for,
                                 ledger=ledger, num_classes=recipe.extras.get("num_classes"),
                                 dropped_terms=interventions.dropped_terms)
    batches = step_batches(recipe.batches, steps=config.steps, spec=config.recipe, per_step=recipe.micro_batches)
    if ranks is not None and not sharded:  # the recorder watches the inner module; forward and backward go through DDP
        from repro_audit.probes.torch.distributed import wrap_in_ddp

        recipe.model = wrap_in_ddp(model)
    # The step's forward goes through DDP (its all-reduce is the step); a NaN replay through the inner module
    # only, since a forward through DDP without its backward would leave DDP's reducer waiting.
    trained = recipe.model
    model.train()
    private = ExitStack()
    private.enter_context(interventions.private_generators(model))
    try:
        for step in range(1, config.steps + 1):
            batch = interventions.batch(step, next(batches))
            micro = batch if recipe.micro_batches > 1 else [batch]
            optimizer.zero_grad(set_to_none=True)
            phase = _phases(progress, step, ranked=ranks is not None)
            phase("forward")
            frames = compiled_frames()
            recorder.begin_step(step, batch, replay=_forward(recipe, model, micro[0], step))
            for index, part in enumerate(micro):
                if index:
                    recorder.next_micro_batch(replay=_forward(recipe, model, part, step))
                terms = _forward(recipe, trained, part, step)()
                try:
                    total = recorder.combine_loss(terms, scale=1.0 / len(micro))
                except TypeError as exc:
                    raise RunFailed(f"recipe {config.recipe}: {exc}") from exc
                phase("backward")
                recorder.backward(scaled_for_backward(recipe, total))
                recorder.after_backward()
            phase("optimizer step")
            update = prepare_update(recipe, model=model, optimizer=optimizer, step=step, spec=config.recipe)
            if update:
                recorder.note_update(update)
            interventions.apply_hyperparameters(optimizer, step)
            optimizer_step(recipe, optimizer)
            graph = recorder.finish_graph()
            record = recorder.end_step()
            refuse_compiled_step(frames, where=f"recipe {config.recipe}")
            if recipe.lr_scheduler is not None:
                recipe.lr_scheduler.step()
            if graph is not None:
                writer.write_graph(step, graph)
                structure["graph_steps"].append(step)
                writer.write_json(fmt.STRUCTURE, structure)
            record["values"] = writer.write_values(step, recorder.values) if recorder.values else None
            writer.append_step(record)
            progress(step)
    finally:
        private.close()
        recorder.close()
    # Modules imported lazily during training belong to the code fingerprint too.
    writer.write_json(fmt.ENVIRONMENT, environment())


def _phases(progress: Callable[..., None], step: int, *, ranked: bool) -> Callable[[str], None]:
    """Where in the step a rank is, said to the launcher (which names the rank a hang holds up); nothing
    for one plain process."""
    if not ranked:
        return lambda name: None
    return lambda name: progress(step, phase=name)


def _environment(config: RunConfig, ranks: dict[str, Any] | None) -> Callable[[], dict[str, Any]]:
    """The environment fingerprint, with the rank's facts under "distributed" when launched by torchrun."""
    from repro_audit.probes.torch.environment import torch_environment

    def environment() -> dict[str, Any]:
        found = torch_environment(recipe_dir=config.config_dir)
        if ranks is not None:
            found["distributed"] = ranks
        return found

    return environment


def _forward(recipe: Recipe, model: Any, batch: Any, step: int) -> Callable[[], Any]:
    """The recipe's loss on one batch, as a call the recorder can replay."""
    if loss_takes_step(recipe.loss):
        return lambda: recipe.loss(model, batch, step=step)
    return lambda: recipe.loss(model, batch)

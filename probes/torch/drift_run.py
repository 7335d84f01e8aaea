"""The cross-rank zoom-in: every rank re-trains up to the step its parameters drifted at, under DDP as in the
recorded run, and lists every op that writes the drifting tensors during that whole step.

Steps before it run plain. At the drift step the mode (probes/torch/tensor_writers.py) watches forward,
backward with DDP's all-reduce, the recipe's before_optimizer_step hook, the optimizer step and the scheduler;
the phase of each write is set by the loop's watcher, the hook and the optimizer's step hooks. Each rank
writes its list to writers.json in its own rank folder; the parent compares the ranks (audit/ops/drift_zoom.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import ConfigError
from repro_audit.audit.trace import TraceWriter

WRITERS_FILE = "writers.json"
# Phase names as the report says them; the hook's is the recipe's field name, which users look for.
HOOK_PHASE = "before_optimizer_step"
OPTIMIZER_PHASE = "optimizer step"


class _DriftStep:
    """Turns the writers' mode on for the whole drift step and names the phase each op runs in."""

    def __init__(self, mode: Any, step: int) -> None:
        self.mode, self.step = mode, step

    def around_step(self, step: int) -> AbstractContextManager[Any]:
        self.mode.phase = "forward"
        return self.mode if step == self.step else nullcontext()  # type: ignore[no-any-return]

    def forward_done(self, terms: dict[str, Any]) -> None:
        self.mode.phase = "backward"

    def backward_done(self, terms: dict[str, Any]) -> None:
        self.mode.phase = "forward"  # the next micro-batch

    def optimizer_starts(self) -> None:
        self.mode.phase = "unscale and clipping"

    def hook(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def before_optimizer_step(**kwargs: Any) -> Any:
            self.mode.phase = HOOK_PHASE
            try:
                return original(**kwargs)
            finally:
                self.mode.phase = "after before_optimizer_step"
        return before_optimizer_step

    def optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.mode.phase = OPTIMIZER_PHASE

    def optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.mode.phase = "after the optimizer step"


def record_drift(config: RunConfig, writer: TraceWriter, *, progress: Callable[..., None],
                 zoom: dict[str, Any]) -> None:
    """Train to `zoom["step"]` on this rank and write the ops that wrote each of `zoom["items"]` there."""
    from repro_audit.probes.torch import require_torch

    require_torch()
    if not config.nproc:
        raise ConfigError("the op before a drift between ranks needs a run with launch/--nproc")
    if config.launch.get("wrap") == "fsdp":
        raise ConfigError("the op before a drift between ranks is looked for under DDP only, not FSDP (each "
                          "rank holds a shard there)")
    from repro_audit.probes.torch.distributed import join_process_group, leave_process_group

    facts = join_process_group()
    try:
        _record(config, writer, progress=progress, zoom=zoom, rank=int(facts["rank"]))
    finally:
        leave_process_group()


def _record(config: RunConfig, writer: TraceWriter, *, progress: Callable[..., None], zoom: dict[str, Any],
            rank: int) -> None:
    from repro_audit.probes.torch.distributed import wrap_in_ddp
    from repro_audit.probes.torch.plain_loop import build_recipe, run_steps
    from repro_audit.probes.torch.tensor_writers import TensorWriters

    step = int(zoom["step"])
    items = [(str(item["category"]), str(item["item"])) for item in zoom.get("items") or []]
    recipe = build_recipe(config)
    model, optimizer = recipe.model, recipe.optimizer
    mode = TensorWriters([_key(*item) for item in items], _resolver(model, optimizer))
    watcher = _DriftStep(mode, step)
    if recipe.before_optimizer_step is not None:
        recipe.before_optimizer_step = watcher.hook(recipe.before_optimizer_step)
    handles = [optimizer.register_step_pre_hook(watcher.optimizer_pre),
               optimizer.register_step_post_hook(watcher.optimizer_post)]
    try:
        run_steps(config, recipe, steps=step, watcher=watcher, progress=progress, trained=wrap_in_ddp(model))
    finally:
        for handle in handles:
            handle.remove()
        writer.write_json(WRITERS_FILE, {"rank": rank, "step": step, "writes": mode.writes, "cut": mode.cut,
                                          "optimizer": type(optimizer).__name__})


def _key(category: str, item: str) -> str:
    return f"{category}:{item}"


def _resolver(model: Any, optimizer: Any) -> Callable[[str], Any]:
    """Name -> the tensor: a parameter of the recipe's own module (no DDP prefix), or the optimizer state
    slot `<parameter>.<slot>`, as the trace names them."""
    parameters = dict(model.named_parameters())

    def resolve(key: str) -> Any:
        category, _, item = key.partition(":")
        if category == "parameters":
            return parameters.get(item)
        name, _, slot = item.rpartition(".")
        parameter = parameters.get(name)
        state = optimizer.state.get(parameter) if parameter is not None else None
        value = state.get(slot) if state else None
        return value if hasattr(value, "untyped_storage") else None
    return resolve

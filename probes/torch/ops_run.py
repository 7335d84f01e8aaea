"""`repro-audit ops` for torch: the recipe's training steps with every op executed twice (op_recheck).

Runs in the worker like `record`, and writes what it found to ops.json in the trace folder: the ops whose
two executions differed, each with step, phase, module, source line, loss terms, dtype/shape and distance,
and the ops known to be nondeterministic on the device in use. Nothing else of the run is recorded: the
point is one run that lists every nondeterministic op, not a trace to compare.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.trace import TraceWriter

OPS_FILE = "ops.json"


class _Recheck:
    """Watches the plain loop: the recheck mode over whole steps, phases named, loss terms attributed."""

    def __init__(self, mode: Any) -> None:
        self.mode = mode

    def around_step(self, step: int) -> AbstractContextManager[Any]:
        self.mode.end_step()
        self.mode.step = step
        self.mode.phase = "forward"
        return self.mode  # type: ignore[no-any-return]

    def forward_done(self, terms: dict[str, Any]) -> None:
        self.mode.finish_forward()

    def backward_done(self, terms: dict[str, Any]) -> None:
        self.mode.attribute_loss_terms(terms)
        self.mode.phase = "forward"  # the next micro-batch

    def optimizer_starts(self) -> None:
        self.mode.phase = "optimizer"


def record_ops(config: RunConfig, writer: TraceWriter, *, progress: Callable[[int], None]) -> None:
    from repro_audit.probes.torch.op_recheck import OpRecheckMode
    from repro_audit.probes.torch.op_sites import ModuleStack
    from repro_audit.probes.torch.plain_loop import build_recipe, run_steps

    recipe = build_recipe(config)
    modules = ModuleStack(recipe.model)
    mode = OpRecheckMode(module_of=modules.current)
    done = 0

    def count(step: int) -> None:
        nonlocal done
        done = step
        progress(step)

    try:
        run_steps(config, recipe, steps=config.steps, watcher=_Recheck(mode), progress=count)
    finally:
        mode.end_step()
        modules.close()
        writer.write_json(OPS_FILE, ops_record(mode, steps=done, device=_device_of(recipe.model)))


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
        "ops_not_rerun": mode.ops_not_rerun,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn": {"enabled": bool(cudnn.enabled), "deterministic": bool(cudnn.deterministic),
                  "benchmark": bool(cudnn.benchmark)} if device == "cuda" else None,
        "disagreements": [item.to_dict() for item in mode.disagreements],
        "known": list(mode.known.values()),
    }


def _device_of(model: Any) -> str:
    for parameter in model.parameters():
        return str(parameter.device.type)
    return "cpu"

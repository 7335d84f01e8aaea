"""Attach mode for users who keep their own training loop (PyTorch).

    with repro_audit.attach("run.trace", model=model, optimizer=optimizer, loss_weights={"aux": 0.0}) as run:
        for batch in loader:
            with run.step(batch) as step:
                optimizer.zero_grad()
                total = step.loss({"ce": ce(model(x), y), "aux": aux_loss})
                step.backward(total)
                optimizer.step()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping


def attach(path: str | Path, *, model: Any = None, optimizer: Any = None,
           build: Callable[[], tuple[Any, Any]] | None = None, label: str = "attached",
           loss_weights: Mapping[str, float] | None = None, capture: Mapping[str, Any] | None = None,
           seed: int | None = None) -> Any:
    """Start recording a trace at `path` around your own loop; returns a context manager.

    Pass `build=` (a function returning model and optimizer) to record creation order and seed offsets;
    a model built before attaching has its initial values recorded, but not how they came about.
    """
    from repro_audit.probes.torch import require_torch

    require_torch()
    from repro_audit.probes.torch.attach import AttachedRun

    return AttachedRun(path, model=model, optimizer=optimizer, build=build, label=label,
                       loss_weights=loss_weights, capture=capture, seed=seed)

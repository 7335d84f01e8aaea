"""`from repro_audit.audit.lightning import AuditLightningCallback`: record a Lightning `Trainer.fit` as a trace
(docs/trainers.md).

Importing this module imports Lightning; nothing else in `audit` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repro_audit.probes.torch import require_torch

require_torch()
try:
    from lightning.pytorch import Callback
except ImportError as exc:
    from repro_audit.audit.errors import FrameworkMissing

    raise FrameworkMissing("lightning is not installed: pip install 'repro-audit[trainers]'") from exc

from repro_audit.probes.torch.trainer_bridge import TrainerBridge


class AuditLightningCallback(Callback):  # type: ignore[misc]
    """Records each training batch of `Trainer.fit` (automatic optimization, one optimizer).

    The loss `training_step` returns is the loss term "loss"; Lightning backpropagates it itself, so a
    `loss_weights` weight is recorded but not applied.
    """

    def __init__(self, path: str | Path, *, label: str | None = None, seed: int | None = None,
                 module: str | None = None, capture: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        """`module`: the attribute of your LightningModule that holds the network (e.g. "model"), recorded in
        its place, so parameter names match a recipe that builds that network."""
        self.bridge = TrainerBridge(path, label=label, seed=seed, loss_weights=None, capture=capture, config=config)
        self.module = module

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError("AuditLightningCallback records runs with exactly one optimizer")
        self.bridge.open(getattr(pl_module, self.module) if self.module else pl_module, trainer.optimizers[0])

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.bridge.begin(batch)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self.bridge.loss({"loss": loss})

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.bridge.gradients_ready()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.bridge.end()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.bridge.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.bridge.close(exception)

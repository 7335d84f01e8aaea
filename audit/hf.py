"""`from repro_audit.audit.hf import AuditTrainerCallback`: record a HuggingFace `Trainer` run as a trace (docs/trainers.md).

Importing this module imports transformers; nothing else in `audit` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repro_audit.probes.torch import require_torch

require_torch()
try:
    from transformers import TrainerCallback
except ImportError as exc:  # said with the fix, where the integration is first needed
    from repro_audit.audit.errors import FrameworkMissing

    raise FrameworkMissing("transformers is not installed: pip install 'repro-audit[trainers]'") from exc

from repro_audit.probes.torch.trainer_bridge import TrainerBridge


class AuditTrainerCallback(TrainerCallback):  # type: ignore[misc]
    """Records each optimizer step of `Trainer.train()`.

    The model's forward output `loss` is the loss term "loss" (weight from `loss_weights`, default 1.0); the
    callback hands the Trainer the weighted total to backpropagate, as the runner does for a recipe. The
    batch is the model's keyword inputs of the step's first forward. Gradient accumulation is not supported.
    """

    def __init__(self, path: str | Path, *, label: str | None = None, seed: int | None = None,
                 loss_weights: Mapping[str, float] | None = None, capture: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        self.bridge = TrainerBridge(path, label=label, seed=seed, loss_weights=loss_weights, capture=capture,
                                    config=config)
        self._hooks: list[Any] = []
        self._armed = False

    def on_train_begin(self, args: Any, state: Any, control: Any, *, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if getattr(args, "gradient_accumulation_steps", 1) != 1:
            raise ValueError("AuditTrainerCallback records one forward per step: gradient_accumulation_steps "
                             "must be 1")
        self.bridge.open(model, optimizer)
        # Ours first: the step begins before the recorder's own hooks see the root module's call.
        self._hooks = [model.register_forward_pre_hook(self._before_forward, with_kwargs=True, prepend=True),
                       model.register_forward_hook(self._after_forward, with_kwargs=True)]

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._armed = True  # the next forward of the model is this step's

    def _before_forward(self, module: Any, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._armed:
            self.bridge.begin({**{str(i): value for i, value in enumerate(inputs)}, **kwargs})

    def _after_forward(self, module: Any, inputs: Any, kwargs: Any, output: Any) -> Any:
        if not self._armed:
            return None
        self._armed = False
        loss = output["loss"] if isinstance(output, Mapping) else getattr(output, "loss", None)
        if loss is None:
            raise ValueError("AuditTrainerCallback needs the model's forward to return a loss (output['loss'])")
        output["loss"] = self.bridge.loss({"loss": loss})
        return output

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bridge.gradients_ready()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bridge.end()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self.bridge.close()

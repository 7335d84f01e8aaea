"""What the user's code did to the gradients between backward and optimizer.step(), in attach mode.

Gradient clipping and a GradScaler's unscaling write the gradients in place, which moves their version
counters; a new tensor assigned to `.grad` has another identity. Only when one of those changed is the
gradients' norm read again (one pass), so that the step record says by what factor the optimizer's
gradients differ from backward's: a changed clip norm is then a changed update, not nondeterminism. Under
a dispatch mode (step 1's full capture) in-place writes leave version counters alone, so there the
gradients' hashes are compared instead.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch.utils._python_dispatch import _disable_current_modes

from repro_audit.probes.torch.tensors import tensor_hash


class GradientChanges:
    """An optimizer step pre-hook that notes `gradient_factor` in the step record's `update`."""

    def __init__(self, optimizer: torch.optim.Optimizer, recorder: Any) -> None:
        self.recorder = recorder
        self._versions: list[tuple[int, int] | None] | None = None
        self._hashes: list[str | None] = []
        self._norm = 0.0
        self._handle = optimizer.register_step_pre_hook(self._before_step)

    def after_backward(self, summaries: Mapping[str, Any]) -> None:
        self._versions = self._current()
        self._hashes = [(summaries.get(name) or {}).get("hash") for name, _ in self.recorder.trainable]
        self._norm = math.sqrt(sum(float(s["norm"]) ** 2 for s in summaries.values() if s and s.get("norm") is not None))

    def remove(self) -> None:
        self._handle.remove()

    def _current(self) -> list[tuple[int, int] | None]:
        return [(id(p.grad), p.grad._version) if p.grad is not None else None for _, p in self.recorder.trainable]

    def _changed(self) -> bool:
        if self._versions is None:
            return False
        if self._current() != self._versions:
            return True
        if self.recorder.dispatch is None:
            return False
        with _disable_current_modes():
            hashes = [tensor_hash(p.grad) if p.grad is not None else None for _, p in self.recorder.trainable]
        return hashes != self._hashes

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._changed():
            return
        self._versions = None
        grads = [p.grad for _, p in self.recorder.trainable if p.grad is not None]
        with _disable_current_modes():
            norms = torch._foreach_norm([g.detach() for g in grads]) if grads else []
            norm = math.sqrt(sum(float(n) ** 2 for n in norms))
        factor = norm / self._norm if self._norm and math.isfinite(self._norm) else None
        self.recorder.note_update({
            "gradient_norm_backward": self._norm,
            "gradient_norm_step": norm,
            "gradient_factor": None if factor is None or not math.isfinite(factor) else float(f"{factor:.7g}"),
        })

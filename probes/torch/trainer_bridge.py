"""Record a loop someone else owns (HuggingFace Trainer, Lightning) through their callbacks.

The trainers differ only in which hook sees what; this bridge turns "a step starts with this batch", "these
are the loss terms", "the gradients are ready" and "the optimizer stepped" into the attach mode's recorder
calls (probes/torch/attach.py), so the trace is the one the runner writes for a recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from repro_audit.probes.torch.attach import AttachedRun, AttachedStep


class TrainerBridge:
    """One trace, opened when the trainer has its model and optimizer, a step at a time."""

    def __init__(self, path: str | Path, *, label: str | None, seed: int | None,
                 loss_weights: Mapping[str, float] | None, capture: Mapping[str, Any] | None,
                 config: Mapping[str, Any] | None) -> None:
        self.path = Path(path)
        self.label = label or self.path.stem
        self.seed, self.loss_weights, self.capture, self.config = seed, loss_weights, capture, config
        self.run: AttachedRun | None = None
        self.current: AttachedStep | None = None
        self.ranks: dict[str, Any] | None = None

    def open(self, model: torch.nn.Module, optimizer: Any) -> None:
        """`optimizer` may be a wrapper (accelerate's AcceleratedOptimizer): the torch optimizer inside it."""
        inner = getattr(optimizer, "optimizer", optimizer)
        ranks = _ranks()
        path = self.path if ranks is None else self.path / f"rank_{ranks['rank']:02d}"
        if ranks is not None and ranks["rank"] == 0:
            self._write_ranks(ranks, complete=False)
        self.run = AttachedRun(path, model=model, optimizer=inner, build=None, label=self.label,
                               loss_weights=self.loss_weights, capture=self.capture, seed=self.seed)
        self.ranks = ranks
        if self.config is not None:  # to compare with a recipe run, whose config is compared too
            self.run.writer.manifest["config"] = dict(self.config)
        if ranks is not None:  # the rank's facts, as a run under `launch` records them
            from repro_audit.probes.torch.attach import _script_folder
            from repro_audit.probes.torch.environment import torch_environment

            self.run.writer.write_json("environment.json", {**torch_environment(recipe_dir=_script_folder()),
                                                            "distributed": ranks})

    def _write_ranks(self, ranks: Mapping[str, Any], *, complete: bool) -> None:
        """Rank 0 says how many ranks the run has (ranks.json), so `compare` reads it rank by rank."""
        from repro_audit.audit.trace.ranks import RANKS_FORMAT, write_ranks_file

        self.path.mkdir(parents=True, exist_ok=True)
        write_ranks_file(self.path, {"format": RANKS_FORMAT, "nproc": ranks["world_size"], "label": self.label,
                                     "complete": complete})

    def begin(self, batch: Any) -> None:
        assert self.run is not None, "the trainer started a step before training began"
        self.current = AttachedStep(self.run, batch).__enter__()

    def loss(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        assert self.current is not None
        return self.current.loss(terms)

    def gradients_ready(self) -> None:
        """After backward, before the optimizer step: the gradients as the optimizer will see them."""
        if self.current is not None and not self.current._backward_seen:
            self.run.recorder.after_backward()  # type: ignore[union-attr]
            self.current._backward_seen = True

    def end(self) -> None:
        """After the optimizer step: parameters and optimizer state, and the step record is written."""
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None

    def close(self, error: BaseException | None = None) -> None:
        if self.current is not None:
            self.current.__exit__(type(error) if error else None, error, None)
            self.current = None
        if self.run is not None:
            self.run.close(error)
            self.run = None
            if self.ranks is not None and self.ranks["rank"] == 0 and error is None:
                self._write_ranks(self.ranks, complete=True)


def _ranks() -> dict[str, Any] | None:
    """The rank's facts where the trainer runs under a process group of more than one rank (DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    from repro_audit.probes.torch.distributed import distributed_facts

    return distributed_facts()

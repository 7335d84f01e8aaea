"""Attach mode: record a trace around the user's own training loop.

The user keeps the loop; they name the model, the optimizer and the loss terms, and wrap each step.
The same step recorder as the runner's loop does the recording, so both produce the same trace.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.torch.compiled import refuse_compiled_model
from repro_audit.probes.torch.dispatch_capture import DispatchCapture
from repro_audit.probes.torch.environment import torch_environment
from repro_audit.probes.torch.initialisation import initialisation_record
from repro_audit.probes.torch.modules import module_tree
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder


class AttachedRun:
    """A trace being recorded around a user's loop; use `step(batch)` for each training step."""

    def __init__(self, path: str | Path, *, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 build: Callable[[], tuple[torch.nn.Module, torch.optim.Optimizer]] | None, label: str,
                 loss_weights: Mapping[str, float] | None, capture: Mapping[str, Any] | None, seed: int | None
                 ) -> None:
        from repro_audit.audit.config import CAPTURE_DEFAULTS

        self.capture = {**CAPTURE_DEFAULTS, **(capture or {})}
        self.loss_weights = dict(loss_weights or {})
        config = {"recipe": "<attach>", "framework": "torch", "seed": seed, "label": label,
                  "loss_weights": self.loss_weights, "capture": self.capture}
        self.ledger = RandomLedger(module_of=lambda: None)
        capture_build = DispatchCapture(self.ledger, lambda: None, record_ops=False, track_storage=True)
        if build is not None:
            if seed is not None:
                torch.manual_seed(seed)
            with capture_build:
                model, optimizer = build()
        if model is None or optimizer is None:
            raise TypeError("attach needs model= and optimizer= (or build= returning both)")
        refuse_compiled_model(model, where="attach")
        # Made once the model is there: a build that fails leaves no locked staging folder behind.
        self.writer = TraceWriter(path, framework="torch", config=config, label=label)
        self.model, self.optimizer = model, optimizer
        self.writer.write_json(fmt.ENVIRONMENT, torch_environment(recipe_dir=_script_folder()))
        initialisation = initialisation_record(model, capture_build, self.ledger.take_entries(), seed=seed or 0)
        if build is None:
            initialisation["note"] = ("the model was built before attach: creation order and seed offsets were "
                                      "not observed (pass build= to record them)")
        self.writer.write_json(fmt.INITIALISATION, initialisation)
        self.structure: dict[str, Any] = {"modules": module_tree(model), "graph_steps": []}
        self.writer.write_json(fmt.STRUCTURE, self.structure)
        # The user's code between backward and optimizer.step() (clipping, unscaling) is not ours to see:
        # the recorder notes how it changed the gradients.
        self.recorder = TorchStepRecorder(model, optimizer, capture=self.capture, weight_of=self.weight_for,
                                          ledger=self.ledger, watch_gradient_changes=True)
        self.steps = 0

    def weight_for(self, term: str) -> float:
        from repro_audit.audit.config import term_weight

        return term_weight(self.loss_weights, term)

    def step(self, batch: Any = None) -> AttachedStep:
        return AttachedStep(self, batch)

    def close(self, error: BaseException | None = None) -> Path:
        self.recorder.close()
        if error is None:
            return self.writer.finish(complete=True)
        return self.writer.finish(complete=False, error={
            "kind": "crash", "type": type(error).__name__, "message": str(error), "step": self.steps + 1,
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))})

    def __enter__(self) -> AttachedRun:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close(exc)


def _script_folder() -> str | None:
    """The folder of the user's script: its modules are the user's code, compared by source."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return str(Path(main).resolve().parent) if main else None


class AttachedStep:
    """One step of the user's loop: forward, `loss(terms)`, backward, optimizer.step() inside it.

    Gradient accumulation: call `loss(...)` and `backward(...)` once per micro-batch, then step the
    optimizer; every micro-batch's loss terms are recorded."""

    def __init__(self, run: AttachedRun, batch: Any) -> None:
        self.run = run
        self.batch = batch
        self._backward_seen = False

    def __enter__(self) -> AttachedStep:
        self.run.steps += 1
        self.run.recorder.begin_step(self.run.steps, self.batch)
        return self

    def loss(self, terms: Mapping[str, torch.Tensor], *, scale: float = 1.0) -> torch.Tensor:
        """The weighted total of the named terms (weights from loss_weights, default 1.0), times `scale`
        (1/micro-batches, where gradients are accumulated)."""
        return self.run.recorder.combine_loss(terms, scale=scale)

    def backward(self, total: torch.Tensor) -> None:
        """total.backward(), keeping the graph so NaN provenance can look again if gradients turn non-finite."""
        self.run.recorder.backward(total)
        self.run.recorder.after_backward()
        self._backward_seen = True

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        recorder = self.run.recorder
        if exc is not None:
            recorder.abort_step()
            return
        if not self._backward_seen:
            recorder.after_backward()
        graph = recorder.finish_graph()
        record = recorder.end_step()
        if graph is not None:
            self.run.writer.write_graph(record["step"], graph)
            self.run.structure["graph_steps"].append(record["step"])
            self.run.writer.write_json(fmt.STRUCTURE, self.run.structure)
        record["values"] = self.run.writer.write_values(record["step"], recorder.values) if recorder.values else None
        self.run.writer.append_step(record)

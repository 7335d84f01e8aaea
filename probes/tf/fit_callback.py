"""A Keras callback that records a `model.fit` run as a repro-audit trace (docs/keras-fit.md).

The trace is the one the runner writes for a recipe (docs/trace-format.md), step by step from inside
`fit`: batch fingerprint, loss terms of `compile(loss=..., loss_weights=...)`, total, gradients,
parameters, buffers and optimizer state after each batch. What a callback cannot see is marked as not
captured rather than invented: no op graph, layer outputs, random-draw ledger or NaN provenance, each step
saying so in `notes`; the comparison skips what one run did not capture.
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from repro_audit.audit.errors import ConfigError
from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.tf.fit_step import FitStep, FitStepOutputs
from repro_audit.probes.tf.model_tree import ModelTree
from repro_audit.probes.tf.step_record import assemble, batch_record

RECORDER = "keras-fit"
NOT_CAPTURED = ("recorded by the Keras fit callback: op graph, layer outputs, random draws and NaN provenance "
                "not captured")


class AuditCallback(keras.callbacks.Callback):
    """Record every training batch of `model.fit` into the trace at `path`.

    `seed` is the seed the script set (recorded, not applied); `config` replaces the recorded config, to
    compare with a recipe run under the same one; `source_dir` is the folder whose modules count as the
    user's code (default: the folder of the running script).
    """

    def __init__(self, path: str | os.PathLike[str], *, label: str | None = None, seed: int | None = None,
                 config: Mapping[str, Any] | None = None, source_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.label = label or self.path.stem
        self.seed = seed
        self.config = dict(config) if config is not None else None
        self.source_dir = str(source_dir) if source_dir is not None else _script_dir()
        self.writer: TraceWriter | None = None
        self.step: FitStep | None = None
        self.step_number = 0
        self.trace: Path | None = None  # where the last fit's trace is, once finished

    # -- Keras's lifecycle -----------------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        model = self.model
        _check_usable(model)
        tree = ModelTree(model)
        self.writer = TraceWriter(self.path, framework="tensorflow", config=self._config(), label=self.label)
        try:
            self._write_start(tree)
            self.step = FitStep(model, tree)
            self.step.install(on_failure=self._failed)
        except BaseException as exc:
            self._failed(exc)
            raise
        self.step_number = 0
        atexit.register(self._abandoned)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.step is None or self.writer is None:
            return
        try:
            self.step_number += 1
            self.writer.append_step(self._record(self.step_number, self.step.read()))
        except BaseException as exc:
            self._failed(exc)
            raise

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self.writer is None:
            return
        self._release()
        self._write_environment()
        self.trace = self._close(complete=True)

    # -- the trace -------------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        if self.config is not None:
            return {**self.config, "framework": "tensorflow", "label": self.label}
        params = getattr(self, "params", None) or {}
        # What the runner's config would say: the loss weights (a changed weight is then a config change,
        # as it is between two recipe runs) and how the step runs.
        return {"recorder": RECORDER, "framework": "tensorflow", "seed": self.seed, "label": self.label,
                "steps": params.get("steps"), "epochs": params.get("epochs"),
                "loss_weights": _loss_weights(self.model), "run_eagerly": bool(self.model.run_eagerly)}

    def _write_start(self, tree: ModelTree) -> None:
        from repro_audit.probes.tf.capture import Capture
        from repro_audit.probes.tf.initialisation import CreationLedger, initialisation_record

        assert self.writer is not None
        self._write_environment()
        capture = Capture()  # never installed: fit's model was built before the callback could watch
        self.writer.write_json(fmt.INITIALISATION, initialisation_record(
            tree, CreationLedger(capture), capture, seed=self.seed if self.seed is not None else -1))
        self.writer.write_json(fmt.STRUCTURE, {"modules": tree.structure(), "graph_steps": [], "mode": RECORDER})

    def _write_environment(self) -> None:
        from repro_audit.probes.tf.environment import tf_environment

        assert self.writer is not None
        self.writer.write_json(fmt.ENVIRONMENT, tf_environment(recipe_dir=self.source_dir))

    def _record(self, number: int, outputs: FitStepOutputs) -> dict[str, Any]:
        assert self.step is not None
        batch_summary, _ = batch_record(outputs.batch)
        record = assemble(number, batch=batch_summary, summaries=outputs.summaries, values=outputs.values,
                          term_names=outputs.term_names, weights=outputs.weights,
                          parameter_names=[p.name for p in self.step.params], optimizer=self.step.optimizer_view)
        record["module_outputs"] = None
        record["random_draws"] = None
        record["graph"] = None
        record["nan_provenance"] = None
        record["term_attribution"] = None
        record["values"] = None
        record["notes"].append(NOT_CAPTURED)
        if outputs.missing_gradients:
            record["notes"].append(f"{len(outputs.missing_gradients)} parameters got no gradient")
        return record

    # -- ending ----------------------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        """A failed or interrupted fit leaves an incomplete trace with the steps recorded so far."""
        if self.writer is None:
            return
        self._release()
        kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crash"
        self._close(complete=False, error={
            "kind": kind, "type": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else "",
            "traceback": "".join(traceback.format_exception(exc)), "step": self.step_number + 1})

    def _abandoned(self) -> None:
        """At exit, a fit that never reached on_train_end (an error in another callback) ends incomplete."""
        if self.writer is not None:
            self._release()
            self._close(complete=False, error={"kind": "crash", "type": None, "step": self.step_number + 1,
                                               "message": "fit ended without on_train_end", "traceback": None})

    def _release(self) -> None:
        if self.step is not None:
            self.step.remove()
            self.step = None

    def _close(self, *, complete: bool, error: Mapping[str, Any] | None = None) -> Path | None:
        writer, self.writer = self.writer, None
        atexit.unregister(self._abandoned)
        if writer is None:
            return None
        return writer.finish(complete=complete, error=error)


def _check_usable(model: Any) -> None:
    """Refuse, in one line each, what the recorded step cannot follow."""
    if getattr(model, "steps_per_execution", 1) != 1:
        raise ConfigError(f"AuditCallback records one batch per train step: compile the model with "
                        f"steps_per_execution=1 (it is {model.steps_per_execution})")
    if getattr(model, "jit_compile", False) is True:
        raise ConfigError("AuditCallback needs jit_compile=False: compile the model with jit_compile=False")
    if not isinstance(getattr(model, "optimizer", None), keras.optimizers.Optimizer):
        raise ConfigError("AuditCallback needs a Keras optimizer (compile the model with one)")
    if not model.trainable_variables:
        raise ConfigError("AuditCallback needs a built model: give it a keras.Input or call it on a batch before "
                        "fit, so that its initial values can be recorded")


def _loss_weights(model: Any) -> Any:
    try:
        weights = (model.get_compile_config() or {}).get("loss_weights")
    except Exception:  # a model compiled in a way Keras cannot serialise: the terms still carry weights
        return None
    if isinstance(weights, Mapping):
        return {str(name): float(weight) for name, weight in weights.items()}
    if isinstance(weights, (list, tuple)):
        return [float(weight) for weight in weights]
    return float(weights) if isinstance(weights, (int, float)) else None


def _script_dir() -> str | None:
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return str(Path(main).resolve().parent) if main else None

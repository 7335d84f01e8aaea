"""Neutralise one mechanism in a TensorFlow (eager or tf.function) run, for `--verify`.

The same interventions as probes/torch/interventions.py where TF has the mechanism: run A's initial values
for the shared variables (Keras seed-generator states included, so their streams start where run A's did),
run A's global generator states after build, a term left out of the total, run A's learning rate.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from repro_audit.audit.errors import RunFailed
from repro_audit.audit.trace import Trace

RNG_KEY = "rng_after_build/"


def generator_states() -> dict[str, np.ndarray]:
    """The global generators' states after build: Keras's global SeedGenerator and tf.random's."""
    states: dict[str, np.ndarray] = {}
    keras_state = _keras_global_state()
    if keras_state is not None:
        states[f"{RNG_KEY}keras_global"] = np.array(keras_state.numpy())
    tf_generator = _tf_global_generator()
    if tf_generator is not None:
        states[f"{RNG_KEY}tf_global"] = np.array(tf_generator.state.numpy())
    return states


class TfInterventions:
    """The interventions of one run's config; each method does nothing when its intervention is not set."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.dropped_terms = frozenset(self.spec.get("drop_terms") or ())
        self._reference: Any = None
        if self.spec.get("private_rng_modules"):
            raise RunFailed("--verify: a private generator for layers is not available for TensorFlow runs")

    def _initial(self) -> Any:
        if self._reference is None:
            trace = Trace(self.spec["reference_trace"])
            self._reference = trace.values(0)
            if self._reference is None:
                raise RunFailed(f"--verify: reference trace {trace.path} kept no initial values")
        return self._reference

    def load_initial_values(self, variables: list[Any]) -> list[str]:
        """Shared variables (tracked by the model tree: `.name`, `.variable`) take run A's initial values."""
        if not self.spec.get("initial_values"):
            return []
        reference = self._initial()
        loaded = []
        for tracked in variables:
            value = reference.get(f"initial/{tracked.name}")
            if value is not None and tuple(value.shape) == tuple(tracked.variable.shape):
                tracked.variable.assign(value)
                loaded.append(tracked.name)
        return loaded

    def set_generators(self) -> None:
        if not self.spec.get("rng_after_build"):
            return
        reference = self._initial()
        keras_state, tf_generator = _keras_global_state(), _tf_global_generator()
        saved_keras, saved_tf = reference.get(f"{RNG_KEY}keras_global"), reference.get(f"{RNG_KEY}tf_global")
        if keras_state is not None and saved_keras is not None:
            keras_state.assign(saved_keras)
        if tf_generator is not None and saved_tf is not None:
            tf_generator.reset(saved_tf)

    def batch(self, step: int, batch: Any) -> Any:
        """Run A's batch of this step in run B's batch structure (arrays matched by their path)."""
        if not self.spec.get("batches"):
            return batch
        values = Trace(self.spec["reference_trace"]).values(step)
        if values is None:
            raise RunFailed(f"--verify: the reference trace kept no batch values at step {step}")
        return _replaced(batch, "", values)

    def apply_hyperparameters(self, optimizer: Any, step: int) -> None:
        """Run A's learning rate of this step (Keras optimizers have one param group)."""
        for values in (self.spec.get("hyperparameters") or {}).get(str(step), {}).values():
            for key, value in values.items():
                if key != "lr":
                    raise RunFailed(f"--verify: cannot set {key} of a Keras optimizer, only its learning rate")
                rate = getattr(optimizer, "learning_rate", None)
                if not hasattr(rate, "assign"):
                    raise RunFailed("--verify: the optimizer's learning rate is a schedule, not a variable")
                rate.assign(value)


def _replaced(value: Any, prefix: str, values: Any) -> Any:
    """`value` with each array or tensor replaced by the kept one at its path (repro_audit.probes.tf.tensors names)."""
    import tensorflow as tf

    if isinstance(value, (np.ndarray, tf.Tensor, tf.Variable)):
        kept = values.get(f"batch/{prefix or '0'}")
        if kept is None or tuple(kept.shape) != tuple(value.shape):
            raise RunFailed(f"--verify: run A's batch has no array {prefix or '0'!r} of shape {tuple(value.shape)}")
        return np.array(kept) if isinstance(value, np.ndarray) else tf.constant(kept, dtype=value.dtype)
    if isinstance(value, dict):
        return type(value)({key: _replaced(item, f"{prefix}.{key}" if prefix else str(key), values)
                            for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        items = [_replaced(item, f"{prefix}.{index}" if prefix else str(index), values)
                 for index, item in enumerate(value)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _keras_global_state() -> Any:
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return None
    generator = global_state.get_global_attribute("global_seed_generator")
    return getattr(generator, "state", None)


def _tf_global_generator() -> Any:
    import tensorflow as tf
    from tensorflow.python.ops import stateful_random_ops

    if getattr(stateful_random_ops, "global_generator", None) is None:
        return None  # never created: creating it here would be a draw of its own
    return tf.random.get_global_generator()

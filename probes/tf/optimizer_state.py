"""Optimizer hyper-parameters and state variables, per parameter name, for Keras 3 and tf.compat.v1.

The state itself (Adam's moments, the iteration counter) is read inside the recorded step with everything
else, so this module only says which variable is which: (parameter, state key, variable) triples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return None


def _slot_key(attribute: str) -> str:
    key = attribute.lstrip("_")
    if key.endswith("ies"):
        return key[:-3] + "y"
    return key.removesuffix("s")


class KerasOptimizerView:
    """A Keras 3 optimizer: slot lists aligned with its trainable variables (`_momentums`, ...)."""

    def __init__(self, optimizer: Any, names: Mapping[int, str]) -> None:
        self.optimizer = optimizer
        self.names = names

    def slots(self) -> list[tuple[str, str, Any]]:
        """(parameter name, state key, variable) for every per-parameter state variable."""
        trained = list(getattr(self.optimizer, "_trainable_variables", []) or [])
        found: list[tuple[str, str, Any]] = []
        if not trained:
            return found
        for attribute, value in vars(self.optimizer).items():
            if attribute in ("_trainable_variables", "_variables") or not isinstance(value, (list, tuple)):
                continue
            if len(value) != len(trained) or not all(_is_keras_variable(item) or item is None for item in value):
                continue
            for parameter, slot in zip(trained, value):
                name = self.names.get(id(parameter))
                if name is not None and slot is not None:
                    found.append((name, _slot_key(attribute), slot))
        return found

    def scalars(self) -> list[tuple[str, Any]]:
        """Optimizer-wide state: the iteration counter."""
        iterations = getattr(self.optimizer, "iterations", None)
        return [("iterations", iterations)] if iterations is not None else []

    def learning_rate(self) -> Any:
        return self.optimizer.learning_rate

    def param_groups(self, parameter_names: list[str], lr: float | None) -> list[dict[str, Any]]:
        try:
            config = self.optimizer.get_config()
        except Exception:  # custom optimizers without a config
            config = {}
        group: dict[str, Any] = {key: _plain(value) for key, value in sorted(config.items())
                                 if key not in ("name", "learning_rate") and _plain(value) is not None}
        group["lr"] = lr
        group["params"] = list(parameter_names)
        return [group]


class V1OptimizerView:
    """A tf.compat.v1.train.Optimizer: named slots per variable and non-slot variables (beta powers)."""

    def __init__(self, optimizer: Any, names: Mapping[int, str], variables: list[Any]) -> None:
        self.optimizer = optimizer
        self.names = names
        self.variables = variables

    def slots(self) -> list[tuple[str, str, Any]]:
        found = []
        for variable in self.variables:
            name = self.names.get(id(variable))
            for slot_name in self.optimizer.get_slot_names():
                slot = self.optimizer.get_slot(variable, slot_name)
                if slot is not None and name is not None:
                    found.append((name, slot_name, slot))
        return found

    def scalars(self) -> list[tuple[str, Any]]:
        try:
            extra = self.optimizer._non_slot_variables()
        except AttributeError:
            return []
        return sorted(((variable.op.name, variable) for variable in extra), key=lambda pair: pair[0])

    def hyper(self) -> dict[str, Any]:
        found = {}
        for attribute, value in vars(self.optimizer).items():
            if attribute.startswith("_") and not attribute.endswith("_t") and _plain(value) is not None:
                key = attribute.lstrip("_")
                if key not in ("name", "use_locking", "use_own_namescope_for_non_slot_vars") and not \
                        key.startswith("self_"):
                    found[key] = _plain(value)
        return dict(sorted(found.items()))

    def param_groups(self, parameter_names: list[str], lr: float | None) -> list[dict[str, Any]]:
        group = self.hyper()
        group.pop("lr", None)
        group["lr"] = lr
        group["params"] = list(parameter_names)
        return [group]


def _is_keras_variable(value: Any) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(value, keras.Variable)


def is_keras_optimizer(optimizer: Any) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(optimizer, keras.optimizers.Optimizer)


def is_v1_optimizer(optimizer: Any) -> bool:
    import tensorflow as tf

    return isinstance(optimizer, tf.compat.v1.train.Optimizer)

"""Tiny Keras models whose auto-generated layer names shift when a layer is added before others."""

from __future__ import annotations

import gc
import itertools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from repro_audit.audit.recipe import Recipe

BATCH = {"x": np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(4, 2),
         "y": np.linspace(0.0, 1.0, 4, dtype=np.float32).reshape(4, 1)}


def _mse(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    return {"mse": tf.reduce_mean(tf.square(model(batch["x"]) - batch["y"]))}


def sequential(params: dict[str, Any]) -> Recipe:
    """Dense layers of the given widths: [4, 1] names them dense, dense_1; [5, 4, 1] dense .. dense_2."""
    model = keras.Sequential([keras.Input((2,))] + [keras.layers.Dense(w) for w in params["widths"]])
    return Recipe(model=model, optimizer=keras.optimizers.SGD(0.1), batches=itertools.repeat(BATCH), loss=_mse,
                  extras={"mode": params.get("mode", "function")})


def sequential_showing_collector(params: dict[str, Any]) -> Recipe:
    """`sequential`, after writing the collector's state to the run's log
    (tests/probes/test_collector_pause.py)."""
    print(f"collector enabled={gc.isenabled()} frozen={gc.get_freeze_count()}", flush=True)
    return sequential(params)


class Regressor(keras.Model):
    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.body = keras.layers.Dense(4, activation="tanh")
        self.extra = keras.layers.Dense(4) if extra else None  # built before head: shifts head's seed
        self.head = keras.layers.Dense(1)

    def call(self, x: Any) -> Any:
        hidden = self.body(x)
        if self.extra is not None:
            hidden = hidden + 0.0 * self.extra(hidden)
        return self.head(hidden)


def subclassed(params: dict[str, Any]) -> Recipe:
    model = Regressor(bool(params.get("extra", False)))
    model(BATCH["x"])
    return Recipe(model=model, optimizer=keras.optimizers.SGD(0.1), batches=itertools.repeat(BATCH), loss=_mse,
                  extras={"mode": params.get("mode", "function")})


class Schedule:
    """The pretrain pattern: a second term joins at `from_step`; the step is traced again then."""

    def __init__(self, from_step: int) -> None:
        self.from_step = from_step

    def __call__(self, model: Any, batch: dict[str, Any], step: int = 1) -> dict[str, Any]:
        terms = _mse(model, batch)
        if step >= self.from_step:
            terms["l2"] = tf.add_n([tf.reduce_sum(tf.square(v)) for v in model.trainable_variables])
        return terms


def pretrain(params: dict[str, Any]) -> Recipe:
    recipe = subclassed({})
    schedule = Schedule(int(params.get("from_step", 2)))
    return Recipe(model=recipe.model, optimizer=recipe.optimizer, batches=recipe.batches, loss=schedule,
                  extras={"mode": params.get("mode", "function"), "trace_key": lambda s: s >= schedule.from_step})


def wrong_mode(params: dict[str, Any]) -> Recipe:
    recipe = subclassed({})
    return Recipe(model=recipe.model, optimizer=recipe.optimizer, batches=recipe.batches, loss=_mse,
                  extras={"mode": "graph-ish"})


def list_loss(params: dict[str, Any]) -> Recipe:
    recipe = subclassed({})
    return Recipe(model=recipe.model, optimizer=recipe.optimizer, batches=recipe.batches,
                  loss=lambda model, batch: [tf.constant(1.0)], extras={"mode": params.get("mode", "eager")})


def unbuilt(params: dict[str, Any]) -> Recipe:
    return Recipe(model=Regressor(False), optimizer=keras.optimizers.SGD(0.1), batches=itertools.repeat(BATCH),
                  loss=_mse, extras={"mode": "eager"})


def two_batches(params: dict[str, Any]) -> Recipe:
    recipe = subclassed({})
    return Recipe(model=recipe.model, optimizer=recipe.optimizer, batches=[BATCH, BATCH], loss=_mse,
                  extras={"mode": "eager"})

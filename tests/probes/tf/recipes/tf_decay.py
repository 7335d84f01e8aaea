"""Keras: a head that exists in both runs and that only a zero-weighted term reaches, trained with AdamW."""

from __future__ import annotations

import itertools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from repro_audit.audit.recipe import Recipe

BATCH = {"x": np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(4, 2),
         "y": np.linspace(0.0, 1.0, 4, dtype=np.float32).reshape(4, 1)}


class WithProbe(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.body = keras.layers.Dense(4, activation="tanh")
        self.head = keras.layers.Dense(1)
        self.probe = keras.layers.Dense(1)

    def call(self, x: Any) -> Any:
        hidden = self.body(x)
        return self.head(hidden), self.probe(tf.stop_gradient(hidden))


def build(params: dict[str, Any]) -> Recipe:
    model = WithProbe()
    model(BATCH["x"])

    def loss(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        prediction, probe = model(batch["x"])
        terms = {"mse": tf.reduce_mean(tf.square(prediction - batch["y"]))}
        if params.get("probe_term"):
            terms["probe"] = tf.reduce_mean(tf.square(probe))
        return terms

    return Recipe(model=model, optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1),
                  batches=itertools.repeat(BATCH), loss=loss, extras={"mode": params.get("mode", "function")})

"""A tiny Keras model that draws with raw TF random ops: tf.random.uniform (jitter), tf.nn.dropout without
a seed (the shared dropout), a tf.random.Generator (sampler) and a Keras Dropout (SeedGenerator).

`params`: `mode` (eager / function); `noise`: an unseeded tf.random.normal in a zero-weighted loss term,
computed before the shared dropout; `extra_samples`: draws of the shared Generator in a zero-weighted loss
term before the sampler's own draw.
"""

from __future__ import annotations

import itertools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from repro_audit.audit.recipe import Recipe

BATCH = {"x": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3),
         "y": np.linspace(0.0, 1.0, 4, dtype=np.float32).reshape(4, 1)}


class Jitter(keras.layers.Layer):
    def call(self, x: Any) -> Any:
        return x + 0.01 * tf.random.uniform(tf.shape(x))


class Noise(keras.layers.Layer):
    def call(self, x: Any) -> Any:
        return x + tf.random.normal(tf.shape(x))


class StatefulDropout(keras.layers.Layer):
    def call(self, x: Any) -> Any:
        return tf.nn.dropout(x, rate=0.5)


class Sampler(keras.layers.Layer):
    """Adds noise from a tf.random.Generator it shares with other samplers."""

    def __init__(self, generator: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generator = generator

    def call(self, x: Any) -> Any:
        return x + 0.01 * self.generator.normal(tf.shape(x))


class Net(keras.Model):
    def __init__(self, noise: bool, extra_samples: int) -> None:
        super().__init__()
        generator = tf.random.Generator.from_seed(7)
        self.body = keras.layers.Dense(8, activation="tanh")
        self.jitter = Jitter()
        self.noise = Noise() if noise else None
        self.extra_samplers = [Sampler(generator) for _ in range(extra_samples)]
        self.sampler = Sampler(generator)
        self.dropout = StatefulDropout()
        self.keras_dropout = keras.layers.Dropout(0.25)
        self.head = keras.layers.Dense(1)

    def call(self, x: Any, training: bool = False) -> Any:
        return self.head(self.keras_dropout(self.dropout(self.sampler(self.jitter(self.body(x)))), training=training))


def loss(model: Net, batch: dict[str, Any]) -> dict[str, Any]:
    hidden = model.jitter(model.body(batch["x"]))
    terms = {}
    if model.noise is not None:
        terms["noise"] = tf.reduce_mean(model.noise(hidden))
    if model.extra_samplers:
        terms["samples"] = tf.add_n([tf.reduce_mean(sampler(hidden)) for sampler in model.extra_samplers])
    dropped = model.keras_dropout(model.dropout(model.sampler(hidden)), training=True)
    terms["mse"] = tf.reduce_mean(tf.square(model.head(dropped) - batch["y"]))
    return terms


def net(params: dict[str, Any]) -> Recipe:
    model = Net(bool(params.get("noise", False)), int(params.get("extra_samples", 0)))
    model(BATCH["x"])
    return Recipe(model=model, optimizer=keras.optimizers.SGD(0.1), batches=itertools.repeat(BATCH), loss=loss,
                  extras={"mode": params.get("mode", "function")})

"""Recipes: real Keras models as people write them, for the real-model tests of the TF side.

- `mobilenet`: `keras.applications.MobileNetV3Small` (weights=None), with its BatchNorm layers and top
  Dropout, trained on a fixed batch of tiny images. Param: `bn_momentum` (every BatchNorm's momentum: in
  training BatchNorm normalises with the batch's statistics, so only the moving statistics differ).
- `transformer`: a Keras Transformer encoder (MultiHeadAttention with attention dropout, Dropout,
  LayerNormalization, a feed-forward block) classifying token sequences. Params: `noise_branch` (a
  zero-weighted term on features with Gaussian noise drawn by `keras.random.normal` from the global seed
  generator, before the shared token-dropout that draws from it too), `probe_first` (an extra Dense layer
  created before every other layer, so every later layer's default seed moves), `decay` (AdamW's weight
  decay; with `probe_term` a zero-weighted probe reaches its head through the decay only).

Every recipe takes `mode` (eager or function) and trains with a Keras optimizer.
"""

from __future__ import annotations

import itertools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from repro_audit.audit.recipe import Recipe

IMAGES = {"x": np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32),
          "y": np.array([1, 3, 5, 7], dtype=np.int64)}
TOKENS = {"x": np.random.default_rng(1).integers(1, 50, size=(4, 12)).astype(np.int64),
          "y": np.array([0, 1, 2, 1], dtype=np.int64)}


def mobilenet(params: dict[str, Any]) -> Recipe:
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10,
                                                include_preprocessing=False, minimalistic=True, dropout_rate=0.2)
    if "bn_momentum" in params:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(params["bn_momentum"])
    model(IMAGES["x"][:1], training=False)
    ce = keras.losses.SparseCategoricalCrossentropy()

    def loss(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        return {"ce": ce(batch["y"], model(batch["x"], training=True))}

    return Recipe(model=model, optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  batches=itertools.repeat(IMAGES), loss=loss, extras={"mode": params.get("mode", "function")})


class TokenDropout(keras.layers.Layer):
    """Zeroes whole token embeddings, drawing from Keras's global seed generator (no seed of its own)."""

    def call(self, x: Any, training: bool = False) -> Any:
        if not training:
            return x
        keep = keras.random.uniform(tf.shape(x)[:2]) >= 0.1
        return x * tf.cast(keep, x.dtype)[..., None]


class Encoder(keras.Model):
    def __init__(self, *, noise_branch: bool, probe_first: bool, probe_term: bool) -> None:
        super().__init__()
        self.probe = keras.layers.Dense(3, name="probe") if probe_first or probe_term else None
        self.embed = keras.layers.Embedding(50, 32)
        self.token_dropout = TokenDropout()
        self.attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, dropout=0.1)
        self.dropout = keras.layers.Dropout(0.1)
        self.norm_1 = keras.layers.LayerNormalization()
        self.ff_in = keras.layers.Dense(64, activation="gelu")
        self.ff_out = keras.layers.Dense(32)
        self.norm_2 = keras.layers.LayerNormalization()
        self.classifier = keras.layers.Dense(3)
        self.noise_head = keras.layers.Dense(3, name="noise_head") if noise_branch else None

    def call(self, tokens: Any, training: bool = False) -> Any:
        x = self.embed(tokens)
        extra = {}
        if self.noise_head is not None:
            noisy = tf.reduce_mean(x, axis=1) + keras.random.normal((tf.shape(x)[0], 32))
            extra["noise"] = self.noise_head(noisy)
        x = self.token_dropout(x, training=training)
        x = self.norm_1(x + self.dropout(self.attention(x, x, training=training), training=training))
        x = self.norm_2(x + self.ff_out(self.ff_in(x)))
        pooled = tf.reduce_mean(x, axis=1)
        if self.probe is not None:
            extra["probe"] = self.probe(tf.stop_gradient(pooled))
        return self.classifier(pooled), extra


def transformer(params: dict[str, Any]) -> Recipe:
    model = Encoder(noise_branch=bool(params.get("noise_branch")), probe_first=bool(params.get("probe_first")),
                    probe_term=bool(params.get("probe_term")))
    model(TOKENS["x"][:1])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        logits, extra = model(batch["x"], training=True)
        terms = {"ce": ce(batch["y"], logits)}
        if "noise" in extra:
            terms["noise"] = ce(batch["y"], extra["noise"])
        if "probe" in extra and params.get("probe_term"):
            terms["probe"] = ce(batch["y"], extra["probe"])
        return terms

    decay = float(params.get("decay", 0.0))
    optimizer = keras.optimizers.AdamW(1e-3, weight_decay=decay) if decay else keras.optimizers.Adam(1e-3)
    return Recipe(model=model, optimizer=optimizer, batches=itertools.repeat(TOKENS), loss=loss,
                  extras={"mode": params.get("mode", "function")})

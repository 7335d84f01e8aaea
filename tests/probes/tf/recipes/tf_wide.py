"""A model with tensors of 16384 elements and more, whose statistics the recorded step reduces in the graph
and whose state a replay restores from the step program's shadows (repro_audit.probes.tf.tensors.LARGE_NUMEL).

From `nan_from_step` on, a term `sqrt(sum(0 * kernel))` joins: its value is 0 and its gradient infinite, so
NaN provenance replays that step from the state it started from. (Weighted 0.0 it would not: TF's SqrtGrad
gives 0 for a zero incoming gradient.) `constant_term` adds a term that reaches no variable.
"""

from __future__ import annotations

import itertools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from repro_audit.audit.recipe import Recipe

WIDTH = 128  # a 128 x 128 kernel and a [128, 128] layer output: 16384 elements each


def build(params: dict[str, Any]) -> Recipe:
    model = keras.Sequential([keras.Input((WIDTH,)), keras.layers.Dense(WIDTH, activation="relu"),
                              keras.layers.Dense(1)])
    rows = np.linspace(-1.0, 1.0, WIDTH * WIDTH, dtype=np.float32).reshape(WIDTH, WIDTH)
    batch = {"x": rows, "y": rows[:, :1] ** 2}
    nan_from = int(params.get("nan_from_step", 0))

    def loss(model: Any, batch: dict[str, Any], step: int = 1) -> dict[str, Any]:
        terms = {"mse": tf.reduce_mean(tf.square(model(batch["x"]) - batch["y"]))}
        if params.get("constant_term"):  # a second term that reaches no variable
            terms["constant"] = tf.reduce_mean(batch["y"])
        if nan_from and step >= nan_from:
            terms["sqrt_zero"] = tf.sqrt(tf.reduce_sum(0.0 * model.layers[0].kernel))
        return terms

    return Recipe(model=model, optimizer=keras.optimizers.Adam(0.01), batches=itertools.repeat(batch), loss=loss,
                  extras={"mode": params.get("mode", "function"),
                          "trace_key": lambda step: bool(nan_from) and step >= nan_from})

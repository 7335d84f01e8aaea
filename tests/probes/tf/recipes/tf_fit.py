"""A small two-output Keras model trained with `fit` (and the AuditCallback) or through the runner.

`model(params)` builds it and its data the same way for both, so a callback trace and a recipe trace of
one seed hold the same numbers; `build` is the recipe; `compile_for_fit` is what the fit script does.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from repro_audit.audit.recipe import Recipe

BATCH_SIZE = 4
SAMPLES = 16
OUTPUTS = ("out_a", "out_b")


def data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = np.linspace(-1.0, 1.0, SAMPLES * 3, dtype=np.float32).reshape(SAMPLES, 3)
    y = {"out_a": np.sin(x[:, :1] * 2.0).astype(np.float32), "out_b": np.cos(x[:, 1:2]).astype(np.float32)}
    return x, y


def model(params: dict[str, Any]) -> keras.Model:
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(8, activation="tanh", name="body")(inputs)
    if params.get("batch_norm"):
        hidden = keras.layers.BatchNormalization(name="norm")(hidden)
    outputs = {name: keras.layers.Dense(1, name=name)(hidden) for name in OUTPUTS}
    return keras.Model(inputs, outputs)


def optimizer(params: dict[str, Any]) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(float(params.get("lr", 0.01)))


def losses() -> dict[str, keras.losses.Loss]:
    return {name: keras.losses.MeanSquaredError() for name in OUTPUTS}


def compile_for_fit(net: keras.Model, params: dict[str, Any], loss_weights: dict[str, float], *,
                    run_eagerly: bool = False, steps_per_execution: int = 1) -> None:
    net.compile(optimizer=optimizer(params), loss=losses(), loss_weights=loss_weights,
                run_eagerly=run_eagerly, steps_per_execution=steps_per_execution)


def batches() -> Any:
    x, y = data()
    while True:
        for start in range(0, SAMPLES, BATCH_SIZE):
            yield {"x": x[start:start + BATCH_SIZE], "y": {name: y[name][start:start + BATCH_SIZE] for name in OUTPUTS}}


def build(params: dict[str, Any]) -> Recipe:
    net = model(params)
    loss_fns = losses()

    def loss(net: keras.Model, batch: dict[str, Any]) -> dict[str, Any]:
        predicted = net(batch["x"], training=True)
        return {name: loss_fns[name](batch["y"][name], predicted[name]) for name in OUTPUTS}

    return Recipe(model=net, optimizer=optimizer(params), batches=batches(), loss=loss,
                  extras={"mode": params.get("mode", "function")})

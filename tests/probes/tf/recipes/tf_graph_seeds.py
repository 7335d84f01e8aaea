"""A two-layer tf.compat.v1 graph, optionally with ops added between its two variables.

`extra`: `none`; `gate` (a variable with a random initializer, like the head gate of an attention loss);
`loss_ops` (deterministic ops only: `0.0 * reduce_sum(...)`, like the seed's simplified loss); `constant`
(a second loss term that reaches no variable, made last, so the graph's seeds and gradients stay). The
first layer has dropout, a stateful random op whose kernel holds its stream.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import tensorflow as tf

from repro_audit.audit.recipe import Recipe
from repro_audit.probes.tf.graph_mode import seeded_graph

v1 = tf.compat.v1


def build(params: dict[str, Any]) -> Recipe:
    extra = params.get("extra", "none")
    graph = seeded_graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        with v1.variable_scope("first"):
            first = v1.get_variable("kernel", [4, 3], initializer=v1.glorot_uniform_initializer())
        hidden = tf.nn.dropout(tf.nn.relu(tf.matmul(x, first)), rate=0.5)
        terms = {}
        if extra == "gate":
            with v1.variable_scope("gate"):
                gate = v1.get_variable("kernel", [3, 3], initializer=v1.glorot_uniform_initializer())
            terms["gate"] = tf.reduce_sum(tf.matmul(hidden, gate))
        elif extra == "loss_ops":
            with tf.name_scope("zero_loss"):
                terms["zero_loss"] = 0.0 * tf.reduce_sum(hidden)
        with v1.variable_scope("second"):
            second = v1.get_variable("kernel", [3, 2], initializer=v1.glorot_uniform_initializer())
        output = tf.matmul(hidden, second)
        if extra == "constant":  # a second term that reaches no variable, made after every seeded op
            terms["constant"] = tf.reduce_mean(x)
        terms = {"mse": tf.reduce_mean(tf.square(output - 1.0)), **terms}
        optimizer = v1.train.AdamOptimizer(0.01)
    batches = itertools.repeat({"x": np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(2, 4)})
    return Recipe(model=terms, optimizer=optimizer, batches=batches, loss=lambda model, inputs: model,
                  extras={"mode": "graph", "graph": graph, "inputs": {"x": x}})

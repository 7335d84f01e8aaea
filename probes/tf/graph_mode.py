"""TF1-style training: a tf.compat.v1 graph and session, as the seed thread's RETURNN setup ran it.

The recipe builds its model into a graph and hands it over; the recorder calls the loss once to get the
term tensors, forms the weighted total, and builds the gradients and the update with the recipe's
tf.compat.v1 optimizer (so the config's `loss_weights` apply, as in eager and function mode). Everything
the trace needs is fetched in the same `session.run` as the update, including the outputs of the step's
stateful random ops (dropout). That is what makes a replay exact: NaN provenance and per-term gradients
are computed afterwards, only where needed, by a second run on the restored pre-step variables with those
random values fed back, so the random kernels do not run (and do not advance) again. Their ops are built
into the graph only then, so a healthy run pays for none of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro_audit.audit.errors import RunFailed
from repro_audit.audit.recipe import Recipe, loss_takes_step
from repro_audit.probes.tf.capture import Capture, last_op_id
from repro_audit.probes.tf.graph_init import GraphTree, graph_initialisation
from repro_audit.probes.tf.graph_record import (
    STATEFUL_RANDOM_OPS,
    OpLabels,
    TracedStep,
    ancestors,
    graph_record,
    label_ops,
)
from repro_audit.probes.tf.health import ActivationOutput, activation_counts, graph_activation_outputs
from repro_audit.probes.tf.nan_provenance import group_by_dtype, nonfinite_matrix
from repro_audit.probes.tf.optimizer_state import V1OptimizerView, is_v1_optimizer
from repro_audit.probes.tf.repeated_unpack import unpack
from repro_audit.probes.tf.tensors import hash_only, pack


def seeded_graph(seed: int | None = None) -> Any:
    """A new tf.Graph with a graph-level seed: `seed`, or the one the recorder set for this run."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    graph = tf.Graph()
    graph.seed = seed if seed is not None else context.global_seed()
    return graph


@dataclass
class GraphStep:
    summaries: dict[str, dict[str, Any]]
    values: dict[str, np.ndarray]
    random_values: list[np.ndarray]
    random_counts: list[int]
    activation_counts: np.ndarray | None = None


class GraphProgram:
    """Builds the total, gradients, update and probe fetches into the recipe's graph; runs one step."""

    def __init__(self, recipe: Recipe, capture: Capture, *, weight_of: Any, spec: str, health: bool = False) -> None:
        import tensorflow as tf

        self.tf = tf
        graph = recipe.extras.get("graph")
        if not isinstance(graph, tf.Graph):
            raise RunFailed(f"recipe {spec}: graph mode needs extras['graph'], the tf.Graph holding the model")
        if not is_v1_optimizer(recipe.optimizer):
            raise RunFailed(f"recipe {spec}: graph mode needs a tf.compat.v1.train optimizer, got "
                            f"{type(recipe.optimizer).__name__}")
        self.graph, self.recipe, self.capture, self.spec = graph, recipe, capture, spec
        self.optimizer = recipe.optimizer
        self.inputs: dict[str, Any] = dict(recipe.extras.get("inputs") or {})
        self.health = health
        with graph.as_default():
            self._build(weight_of)
        self.session = tf.compat.v1.Session(graph=graph, config=recipe.extras.get("session_config"))
        self._labels: OpLabels | None = None
        self._restore: tuple[dict[str, Any], list[Any]] | None = None
        self._nonfinite: tuple[list[list[tuple[int, int]]], list[Any]] | None = None
        self._attribution: Any = None

    def _build(self, weight_of: Any) -> None:
        tf = self.tf
        graph = self.graph
        self.capture.reset()
        self.capture.keep_outputs = False
        self.capture.phase = "forward"
        self.capture.active = True
        try:
            loss = self.recipe.loss
            batch = self.inputs or None
            terms = loss(self.recipe.model, batch, step=None) if loss_takes_step(loss) else loss(self.recipe.model,
                                                                                                  batch)
            if not isinstance(terms, Mapping) or not terms:
                raise RunFailed(f"recipe {self.spec}: the loss function must return a non-empty mapping of "
                                f"named term tensors")
            # The model is what the graph holds once the loss is built (a recipe may build it in the loss).
            self.build_end = last_op_id(graph)
            model_variables = list(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
            trainable = list(graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES))
            self.tree = GraphTree(model_variables, {id(v) for v in trainable})
            self.term_names = [str(name) for name in terms]
            self.weights = {name: weight_of(name) for name in self.term_names}
            self.term_tensors = {str(n): tf.reshape(tf.convert_to_tensor(t), []) for n, t in terms.items()}
            self.total = tf.add_n([self.term_tensors[n] * self.weights[n] for n in self.term_names])
            self.forward_end = last_op_id(graph)
            self.capture.phase = "backward"
            params = [tracked.variable for tracked in self.tree.parameters()]
            grads_and_vars = self.optimizer.compute_gradients(self.total, var_list=params)
            self.backward_end = last_op_id(graph)
            self.capture.phase = "optimizer"
            self.train_op = self.optimizer.apply_gradients([(g, v) for g, v in grads_and_vars if g is not None])
            self.end = last_op_id(graph)
        finally:
            self.capture.active = False
        self.gradient_calls = list(self.capture.gradient_calls)
        self.grads = [(tracked, g) for tracked, (g, _) in zip(self.tree.parameters(), grads_and_vars)]
        self.executed = ancestors([self.train_op, self.total.op, *[t.op for t in self.term_tensors.values()]],
                                  control=True)
        names = {id(tracked.variable): tracked.name for tracked in self.tree.variables}
        self.optimizer_view = V1OptimizerView(self.optimizer, names, params)
        self.random_ops = sorted((op for op in graph.get_operations()
                                  if op._id in self.executed and op.type in STATEFUL_RANDOM_OPS), key=lambda o: o._id)
        self._build_fetches()
        self.initializer = tf.compat.v1.global_variables_initializer()
        self.reads = {key: variable.read_value() for key, variable in self.state}

    def _build_fetches(self) -> None:
        tf = self.tf
        named: list[tuple[str, Any]] = [(f"loss_terms/{n}", self.term_tensors[n]) for n in self.term_names]
        named.append(("total", self.total))
        named += [(f"gradients/{tracked.name}", tf.convert_to_tensor(g)) for tracked, g in self.grads if g is not None]
        self.state = [(f"parameters/{t.name}", t.variable) for t in self.tree.variables if t.kind == "parameter"]
        self.state += [(f"buffers/{t.name}", t.variable) for t in self.tree.variables if t.kind == "buffer"]
        self.state += [(f"optimizer/{param}/{key}", slot) for param, key, slot in self.optimizer_view.slots()]
        self.state += [(f"optimizer/{key}", variable) for key, variable in self.optimizer_view.scalars()]
        known = {id(variable) for _, variable in self.state}
        self.state += [(f"state/{v.op.name}", v) for v in self.graph.get_collection(
            self.tf.compat.v1.GraphKeys.GLOBAL_VARIABLES) if id(v) not in known]
        with tf.control_dependencies([self.train_op]):
            named += [(key, variable.read_value()) for key, variable in self.state]
        named.append(("optimizer_lr", tf.convert_to_tensor(getattr(self.optimizer, "_lr", 0.0))))
        module_outputs = self.recipe.extras.get("module_outputs") or {}
        named += [(f"module_outputs/{path}#0", tf.convert_to_tensor(t)) for path, t in module_outputs.items()]
        named += [(f"random_counts/{i}", tf.size(op.outputs[0])) for i, op in enumerate(self.random_ops)]
        self.layout, self.packed = pack(named, hash_only=hash_only)
        # Health: the named outputs' kinds come from the ops that made them (Relu, Tanh, Sigmoid...).
        self.activations: list[ActivationOutput] = graph_activation_outputs(
            {path: tf.convert_to_tensor(t) for path, t in module_outputs.items()}) if self.health else []
        self.activation_counts = activation_counts(self.activations) if self.activations else None

    # -- running ---------------------------------------------------------------------------------------

    def initialise(self) -> dict[str, Any]:
        """Run the initializers; initialisation.json from the values they produced."""
        self.session.run(self.initializer)
        self.initial = self.session.run(self.reads) if self.reads else {}
        values = {t.name: self.initial[f"{'parameters' if t.kind == 'parameter' else 'buffers'}/{t.name}"]
                  for t in self.tree.variables}
        return graph_initialisation(self.graph, self.tree, values, build_end=self.build_end,
                                    seed=self.graph.seed)

    def feed(self, batch: Any) -> dict[Any, Any]:
        if batch is None:
            return {}
        if not isinstance(batch, Mapping):
            raise RunFailed(f"recipe {self.spec}: graph mode batches must be feed dicts (input name -> array)")
        feed = {}
        for key, value in batch.items():
            if isinstance(key, str):
                target = self.inputs.get(key)
                if target is None:
                    try:
                        target = self.graph.get_tensor_by_name(key if ":" in key else f"{key}:0")
                    except (KeyError, ValueError):
                        raise RunFailed(f"recipe {self.spec}: batch key {key!r} is neither in extras['inputs'] "
                                        f"nor a tensor of the graph") from None
            else:
                target = key
            feed[target] = value
        return feed

    def run(self, batch: Any) -> GraphStep:
        fetches = {"train": self.train_op, "packed": self.packed,
                   "random": [op.outputs[0] for op in self.random_ops]}
        if self.activation_counts is not None:
            fetches["activation_counts"] = self.activation_counts
        out = self.session.run(fetches, feed_dict=self.feed(batch))
        summaries, values = unpack(self.layout, out["packed"], keep_values=True)
        counts = [int(values[f"random_counts/{i}"]) for i in range(len(self.random_ops))]
        return GraphStep(summaries, values, list(out["random"]), counts, out.get("activation_counts"))

    def state_values(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: values[key] for key, _ in self.state}

    # -- replays: the step again on its starting state, its random values fed back -------------------

    def replay(self, fetches: Any, *, batch: Any, random_values: list[np.ndarray],
               before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> Any:
        placeholders, assigns = self._restore_ops()
        self.session.run(assigns, feed_dict={placeholders[key]: before[key] for key, _ in self.state})
        try:
            feed = self.feed(batch)
            feed.update({op.outputs[0]: value for op, value in zip(self.random_ops, random_values)})
            return self.session.run(fetches, feed_dict=feed)
        finally:
            self.session.run(assigns, feed_dict={placeholders[key]: after[key] for key, _ in self.state})

    def _restore_ops(self) -> tuple[dict[str, Any], list[Any]]:
        if self._restore is None:
            tf = self.tf
            with self.graph.as_default(), tf.name_scope("repro_audit_restore"):
                placeholders = {key: tf.compat.v1.placeholder(variable.dtype.base_dtype, variable.shape)
                                for key, variable in self.state}
                assigns = [variable.assign(placeholders[key]) for key, variable in self.state]
            self._restore = (placeholders, assigns)
        return self._restore

    def nonfinite_fetches(self) -> tuple[list[list[tuple[int, int]]], list[Any]]:
        """Counts of NaN/Inf in every float output of the forward and backward ops (built on first use)."""
        if self._nonfinite is None:
            outputs = [(op._id, i, t) for op in self.graph.get_operations()
                       if op._id in self.executed and op._id <= self.backward_end
                       for i, t in enumerate(op.outputs) if t.dtype.is_floating]
            tensors = [t for _, _, t in outputs]
            groups = group_by_dtype(tensors)
            with self.graph.as_default(), self.tf.name_scope("repro_audit_nonfinite"):
                matrices = [nonfinite_matrix([tensors[m] for m in members]) for members in groups]
            self._nonfinite = ([[outputs[m][:2] for m in members] for members in groups], matrices)
        return self._nonfinite

    def attribution_fetch(self) -> Any:
        """[terms, parameters, 3] of (non-finite count, non-zero count, L2 norm) of each term's gradients."""
        if self._attribution is None:
            tf = self.tf
            params = [tracked.variable for tracked in self.tree.parameters()]
            per_term = []
            with self.graph.as_default(), tf.name_scope("repro_audit_attribution"):
                for name in self.term_names:
                    rows = []
                    for grad in tf.gradients(self.term_tensors[name] * self.weights[name], params):
                        if grad is None:
                            rows.append(tf.constant([-1.0, -1.0, -1.0], tf.float64))
                            continue
                        dense = tf.cast(tf.convert_to_tensor(grad), tf.float64)
                        rows.append(tf.stack([
                            tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(dense)), tf.float64)),
                            tf.reduce_sum(tf.cast(tf.not_equal(dense, 0), tf.float64)),
                            tf.norm(tf.reshape(dense, [-1]))]))
                    per_term.append(tf.stack(rows))
                self._attribution = tf.stack(per_term)
        return self._attribution

    def labels(self) -> OpLabels:
        if self._labels is None:
            traced = TracedStep(self.graph, 0, self.forward_end, self.backward_end, self.end, self.term_tensors,
                                self.weights, {t.variable.op._id for t in self.tree.parameters()},
                                [], self.gradient_calls, only=self.executed,
                                module_of_name=self.tree.module_of_name)
            self._labels = label_ops(traced)
        return self._labels

    def graph_record(self, step: int) -> dict[str, Any]:
        return graph_record(step, self.labels())

    def close(self) -> None:
        self.session.close()

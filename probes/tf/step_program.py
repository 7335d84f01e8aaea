"""One TF2 training step (eager or tf.function) that returns what the trace needs as its own outputs.

The step body is the same Python code in both modes: forward under a GradientTape, the weighted total,
gradients, the optimizer update, then the statistics of gradients, parameters after the update, optimizer
state and layer outputs, packed by `repro_audit.probes.tf.tensors.pack`. In `function` mode that body is one
tf.function, so recording keeps it a graph step: the statistics are extra graph outputs, nothing runs
eagerly in between. In `eager` mode the body runs op by op and the op graph is traced once for the record
(not executed) at step 1 and whenever the trace key or the loss terms change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro_audit.audit.errors import RunFailed
from repro_audit.audit.recipe import Recipe, loss_takes_step
from repro_audit.probes.tf.capture import Capture, LayerCall, RandomCall, graph_mark
from repro_audit.probes.tf.graph_record import (
    STATEFUL_RANDOM_OPS,
    TracedStep,
    graph_record,
    label_ops,
    trainable_sources,
)
from repro_audit.probes.tf.health import ActivationOutput, activation_counts, activation_outputs
from repro_audit.probes.tf.model_tree import ModelTree
from repro_audit.probes.tf.optimizer_state import KerasOptimizerView
from repro_audit.probes.tf.repeated_unpack import unpack
from repro_audit.probes.tf.summary_op import summaries_of, summarised_in_graph, summary_op
from repro_audit.probes.tf.tensors import (
    FLOAT_NAMES,
    LARGE_NUMEL,
    Layout,
    hash_only,
    pack,
    plan_layout,
    to_numpy,
)

GLOBAL_GENERATOR = "keras-global-seed-generator"


@dataclass
class TraceMeta:
    """What one trace of the body looked like: the layout of its outputs and what the capture saw."""

    trace_id: int
    layout: Layout
    term_names: list[str]
    weights: dict[str, float]
    missing_gradients: list[str]
    layer_calls: list[LayerCall]
    random_calls: list[RandomCall]
    dynamic_counts: dict[int, str] = field(default_factory=dict)  # random call index -> output key
    drawn_states: dict[int, str] = field(default_factory=dict)  # traced Generator draw's index -> its state's key
    activations: list[ActivationOutput] | None = None  # layer outputs the health record describes
    traced: TracedStep | None = None
    key_order: list[str] = field(default_factory=list)  # every output's key, in the step's order
    in_graph: tuple[list[str], list[str], list[tuple[int, ...]]] | None = None  # keys, dtypes, shapes the op summarised
    _graph: dict[str, Any] | None = None
    _stateful: list[str] | None = None
    _unrecorded: list[str] | None = None

    def graph(self, step: int) -> dict[str, Any] | None:
        if self.traced is None:
            return None
        if self._graph is None:
            self._graph = graph_record(step, label_ops(self.traced))
        return {**self._graph, "step": step}

    def stateful_random_ops(self) -> list[str]:
        """Stateful random ops and tf.random.Generator draws of the step (a replay would advance them):
        those recorded, then any other stateful op of the traced graph."""
        if self._stateful is None:
            recorded = [call.stream or call.op for call in self.random_calls if call.kind != "keras"]
            self._stateful = list(dict.fromkeys(recorded + self.unrecorded_random_ops()))
        return self._stateful

    def unrecorded_random_ops(self) -> list[str]:
        """Stateful random ops in the traced step that no wrapper saw (created through tf.raw_ops...)."""
        if self.traced is None:
            return []
        if self._unrecorded is None:  # once per trace: the record of every step asks
            seen = {call.stream for call in self.random_calls if call.kind == "tf-op-seed"}
            self._unrecorded = [op.name for op in self.traced.graph.get_operations()
                                if self.traced.start < op._id <= self.traced.end and op.type in STATEFUL_RANDOM_OPS
                                and op.name not in seen]
        return self._unrecorded


@dataclass
class StepResult:
    meta: TraceMeta
    summaries: dict[str, dict[str, Any]]
    values: dict[str, np.ndarray]
    activation_counts: np.ndarray | None = None  # repro_audit.probes.tf.health.activation_counts of the step


class StepProgram:
    """The recorded step of one recipe in eager or function mode."""

    def __init__(self, recipe: Recipe, tree: ModelTree, capture: Capture, *, mode: str,
                 weight_of: Callable[[str], float], keep_module_outputs: bool, spec: str,
                 keep_pre_step_state: bool = True, health: bool = False,
                 dropped_terms: frozenset[str] = frozenset()) -> None:
        import tensorflow as tf

        self.tf = tf
        self.recipe = recipe
        self.model = recipe.model
        self.optimizer = recipe.optimizer
        self.tree = tree
        self.capture = capture
        self.mode = mode
        self.weight_of = weight_of
        self.dropped_terms = dropped_terms  # recorded, left out of the total (`--verify`)
        self.keep_module_outputs = keep_module_outputs
        self.health = health
        self.spec = spec
        self.pass_step = loss_takes_step(recipe.loss)
        self.params = tree.parameters()
        self.buffers = [v for v in tree.variables if v.kind == "buffer"]
        self.train_vars = [p.variable for p in self.params]
        names = {}
        for tracked in tree.variables:
            names[id(tracked.variable)] = tracked.name
            names[id(tracked.tf_variable)] = tracked.name
        self.optimizer_view = KerasOptimizerView(self.optimizer, names)
        self.metas: dict[int, TraceMeta] = {}
        self._functions: dict[Any, Any] = {}
        self._eager_packers: dict[Any, Any] = {}
        self._trace_counter = 0
        # Function mode: large layer outputs summarised in the graph at steps whose values are not kept.
        self.summary_op = summary_op() if mode == "function" and keep_module_outputs else None
        self._converted_loss: Callable[..., Any] | None = None
        self._state: tuple[Any, list[tuple[str, Any]]] | None = None
        self._shadows = self._make_shadows() if keep_pre_step_state else []
        self.keeps_pre_step_state = keep_pre_step_state

    # -- state that the step changes, for snapshots and rewinds ----------------------------------------

    def state_variables(self) -> list[tuple[str, Any]]:
        """Every variable a step changes, under the key its value has in the step's outputs."""
        generator = _global_generator()
        if self._state is None or self._state[0] is not generator:
            self._state = (generator, self._find_state_variables(generator))
        return self._state[1]

    def _find_state_variables(self, generator: Any) -> list[tuple[str, Any]]:
        found = [(f"parameters/{p.name}", p.variable) for p in self.params]
        found += [(f"buffers/{b.name}", b.variable) for b in self.buffers]
        found += [(f"optimizer/{param}/{key}", slot) for param, key, slot in self.optimizer_view.slots()]
        found += [(f"optimizer/{key}", variable) for key, variable in self.optimizer_view.scalars()]
        if generator is not None:
            found.append((f"rng/{GLOBAL_GENERATOR}", generator.state))
        return found

    def generator_keys(self) -> dict[str, str]:
        """Generator name -> key of its state among the state variables (see model_tree)."""
        keys = {GLOBAL_GENERATOR: f"rng/{GLOBAL_GENERATOR}"}
        for path in self.tree.seed_generators.values():
            keys[path] = f"buffers/{path}.state"
        return keys

    def snapshot(self) -> dict[str, np.ndarray]:
        return {key: np.array(to_numpy(variable)) for key, variable in self.state_variables()}

    def _make_shadows(self) -> list[tuple[str, Any, Any]]:
        """(key, variable, shadow) for the large float state. Each step first copies such a variable into
        its shadow, into the same buffer every time: the state a replay starts from, kept without a fresh
        allocation per step. Small state comes back with the step's outputs instead."""
        tf = self.tf
        shadows = []
        with tf.init_scope():
            for key, variable in self.state_variables():
                inner = _tf_variable(variable)
                if inner.dtype.name in FLOAT_NAMES and (inner.shape.num_elements() or 0) >= LARGE_NUMEL:
                    shadows.append((key, inner, tf.Variable(tf.zeros(inner.shape, inner.dtype), trainable=False,
                                                            name="repro_audit_pre_step")))
        return shadows

    def shadowed(self) -> set[str]:
        return {key for key, _, _ in self._shadows}

    def pre_step_state(self, small: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The state the last step started from: `small` (kept from the step before) and the shadows."""
        return {**small, **{key: np.array(to_numpy(shadow)) for key, _, shadow in self._shadows}}

    @contextmanager
    def rewound(self, before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> Iterator[None]:
        """Run something on the state the step started from, then put the step's result back."""
        variables = self.state_variables()
        missing = [key for key, _ in variables if key not in before or key not in after]
        if missing:
            raise LookupError(f"no saved value for {missing[0]}")
        for key, variable in variables:
            variable.assign(before[key])
        try:
            yield
        finally:
            for key, variable in variables:
                variable.assign(after[key])

    # -- running ---------------------------------------------------------------------------------------

    def run(self, step: int, batch: Any, *, keep_values: bool) -> StepResult:
        if self.mode == "function":
            function, step_argument = self._function_for(step, whole_outputs=keep_values)
            outputs = function(batch) if step_argument is None else function(batch, step_argument)
            meta = self.metas[int(outputs["trace_id"])]
            packed = outputs["packed"]
        else:
            meta, named = self._body(batch, step, eager=True)
            meta.layout, outputs = self._pack_eagerly(named, meta.activations)
            packed = outputs["packed"]
        summaries, values = unpack(meta.layout, packed, keep_values=True)
        if meta.in_graph is not None:
            summaries.update(summaries_of(*meta.in_graph, to_numpy(outputs["in_graph"])))
        # The step's own order (layer outputs in forward order), which packing by dtype and size does not keep:
        # the differ takes a step's first differing layer output from it.
        summaries = {**{key: summaries[key] for key in meta.key_order if key in summaries}, **summaries}
        counts = outputs.get("activation_counts")
        return StepResult(meta, summaries, values, to_numpy(counts) if counts is not None else None)

    def trace_for_record(self, step: int, batch: Any) -> TraceMeta:
        """Eager mode: trace the step (without running it) to see its op graph."""
        tf = self.tf
        holder: dict[str, TraceMeta] = {}

        def traced(batch: Any) -> Any:
            meta, named = self._body(batch, step, eager=False)
            holder["meta"] = meta
            return [tensor for _, tensor in named[:1]]

        tf.function(traced, autograph=False).get_concrete_function(batch)
        return holder["meta"]

    def call_loss(self, batch: Any, step: Any) -> Mapping[str, Any]:
        loss = self._graph_loss() if not self.tf.executing_eagerly() else self.recipe.loss
        terms = loss(self.model, batch, step=step) if self.pass_step else loss(self.model, batch)
        if not isinstance(terms, Mapping) or not terms:
            raise RunFailed(f"recipe {self.spec}: the loss function must return a non-empty mapping of named "
                            f"terms, got {type(terms).__name__}")
        for name, value in terms.items():
            shape = getattr(value, "shape", None)
            if shape is None or (shape.rank is not None and shape.num_elements() not in (None, 1)):
                raise RunFailed(f"recipe {self.spec}: loss term {name!r} must be a scalar tensor, got "
                                f"{shape if shape is not None else type(value).__name__}")
        return terms

    def _graph_loss(self) -> Callable[..., Any]:
        """The loss as traced: as written (Keras's own train step does not convert either), or converted by
        AutoGraph when the recipe sets `extras["autograph"]` (Python control flow on tensors)."""
        if not self.recipe.extras.get("autograph"):
            return self.recipe.loss
        if self._converted_loss is None:
            try:
                self._converted_loss = self.tf.autograph.to_graph(self.recipe.loss)
            except Exception:  # not convertible (a callable object): trace it as it is
                self._converted_loss = self.recipe.loss
        return self._converted_loss

    def _function_for(self, step: int, *, whole_outputs: bool) -> tuple[Any, Any]:
        """The tf.function for this step: one per trace key (see repro_audit.probes.tf.recorder for the rules),
        and a second one where a step keeps values and the summary op is used at the others (layer outputs
        returned whole, `whole_outputs`, or summarised in the graph)."""
        tf = self.tf
        in_graph = self.summary_op is not None and not whole_outputs
        if not self.pass_step:
            key: Any = None
        elif self.recipe.extras.get("step_as_tensor"):
            key = "tensor"
        else:
            key = self.recipe.extras.get("trace_key", lambda s: s)(step)
        function = self._functions.get((key, in_graph))
        if function is None:
            if key == "tensor":
                function = tf.function(lambda batch, step: self._traced_body(batch, step, in_graph=in_graph),
                                       autograph=False)
            else:
                function = tf.function(functools.partial(self._traced_body, step=step, in_graph=in_graph),
                                       autograph=False)
            self._functions[(key, in_graph)] = function
        if key == "tensor":
            return function, tf.constant(step, dtype=tf.int64)
        return function, None

    def _traced_body(self, batch: Any, step: Any, *, in_graph: bool) -> dict[str, Any]:
        meta, named = self._body(batch, step, eager=False)
        outputs = {"trace_id": self.tf.constant(meta.trace_id)}
        if in_graph and self.summary_op is not None:
            summarised = [(key, tensor) for key, tensor in named
                          if key.startswith("module_outputs/") and summarised_in_graph(tensor)]
            if summarised:
                meta.in_graph = ([key for key, _ in summarised], [tensor.dtype.name for _, tensor in summarised],
                                 [tuple(tensor.shape.as_list()) for _, tensor in summarised])
                outputs["in_graph"] = self.tf.stack([self.summary_op(tensor) for _, tensor in summarised])
                taken = set(meta.in_graph[0])
                named = [(key, tensor) for key, tensor in named if key not in taken]
        meta.layout, outputs["packed"] = pack(named, hash_only=hash_only, separate_state=True)
        # Saturation and dead-unit counts: a reduction or two per activation output, in the same graph.
        counts = activation_counts(meta.activations) if meta.activations else None
        if counts is not None:
            outputs["activation_counts"] = counts
        return outputs

    def _body(self, batch: Any, step: Any, *, eager: bool) -> tuple[TraceMeta, list[tuple[str, Any]]]:
        tf = self.tf
        capture = self.capture
        for _, variable, shadow in self._shadows:
            shadow.assign(variable)
        capture.reset()
        capture.keep_outputs = self.keep_module_outputs
        capture.phase = "forward"
        capture.active = True
        try:
            start = graph_mark()
            with tf.GradientTape() as tape:
                terms = self.call_loss(batch, step)
                names = [str(name) for name in terms]
                weights = {name: self.weight_of(name) for name in names}
                values = [tf.reshape(tf.convert_to_tensor(terms[name]), []) for name in names]
                total = tf.add_n([tf.cast(value, values[0].dtype) * weights[name]
                                  for name, value in zip(names, values) if name not in self.dropped_terms])
            forward_end = graph_mark()
            capture.phase = "backward"
            grads = tape.gradient(total, self.train_vars)
            backward_end = graph_mark()
            capture.phase = "optimizer"
            pairs = [(g, v) for g, v in zip(grads, self.train_vars) if g is not None]
            self.optimizer.apply_gradients(pairs)
            end = graph_mark()
        finally:
            capture.active = False
        self._trace_counter += 1
        meta = TraceMeta(self._trace_counter, Layout([], [], [], {}, []), names, weights,
                         [p.name for p, g in zip(self.params, grads) if g is None],
                         list(capture.layer_calls), list(capture.random_calls))
        if self.health and self.keep_module_outputs:
            meta.activations = activation_outputs(meta.layer_calls)
        if not eager:
            graph = tf.compat.v1.get_default_graph()
            meta.traced = TracedStep(graph, start, forward_end, backward_end, end, dict(zip(names, values)),
                                     weights, trainable_sources(graph, [p.tf_variable for p in self.params]),
                                     meta.layer_calls, list(capture.gradient_calls))
            # Only traces are looked up again (by the trace id a tf.function returns); an eager step's
            # meta holds that step's layer outputs and must not outlive it.
            self.metas[meta.trace_id] = meta
        named = self._named_outputs(meta, names, values, total, grads)
        meta.key_order = [key for key, _ in named]
        return meta, named

    def _named_outputs(self, meta: TraceMeta, names: list[str], values: list[Any], total: Any,
                       grads: list[Any]) -> list[tuple[str, Any]]:
        tf = self.tf
        named: list[tuple[str, Any]] = [(f"loss_terms/{n}", v) for n, v in zip(names, values)]
        named.append(("total", total))
        named += [(f"gradients/{p.name}", tf.convert_to_tensor(g)) for p, g in zip(self.params, grads)
                  if g is not None]
        named += [(key, tf.identity(_tf_variable(variable))) for key, variable in self.state_variables()]
        named.append(("optimizer_lr", tf.convert_to_tensor(self.optimizer_view.learning_rate())))
        for call in meta.layer_calls:
            for suffix, tensor in call.outputs:
                named.append((f"module_outputs/{call.path}{suffix}#{call.call}", tensor))
        for index, draw in enumerate(meta.random_calls):
            if not isinstance(draw.count, int):
                meta.dynamic_counts[index] = f"random_counts/{index}"
                named.append((meta.dynamic_counts[index], draw.count))
            if draw.state_tensor is not None:
                meta.drawn_states[index] = f"random_states/{index}"
                named.append((meta.drawn_states[index], draw.state_tensor))
        return named

    def _pack_eagerly(self, named: list[tuple[str, Any]], activations: list[ActivationOutput] | None
                      ) -> tuple[Layout, dict[str, Any]]:
        """Eager steps pack through a tf.function too: a thousand eager reshapes cost more than the step.
        The health counts of the activation outputs are reduced in the same function."""
        tf = self.tf
        keys = tuple(key for key, _ in named)
        tensors = [tf.convert_to_tensor(tensor) for _, tensor in named]
        layout, _ = _layout_only(keys, tensors)
        kinds = tuple((output.key, output.kind) for output in activations or [] if output.kind is not None)
        packer = self._eager_packers.get((keys, kinds))
        if packer is None:
            packer = tf.function(functools.partial(_eager_pack, keys, kinds), autograph=False)
            self._eager_packers[(keys, kinds)] = packer
        return layout, packer(tensors)


def _eager_pack(keys: tuple[str, ...], kinds: tuple[tuple[str, str], ...], tensors: list[Any]) -> dict[str, Any]:
    outputs = {"packed": pack(list(zip(keys, tensors)), hash_only=hash_only, separate_state=True)[1]}
    if kinds:
        position = {key: index for index, key in enumerate(keys)}
        outputs["activation_counts"] = activation_counts(
            [ActivationOutput(key, key, 0, None, kind, tensors[position[key]]) for key, kind in kinds])
    return outputs


def _layout_only(keys: tuple[str, ...], tensors: list[Any]) -> tuple[Layout, None]:
    shapes = [tuple(int(n) for n in t.shape) for t in tensors]
    return plan_layout(keys, [t.dtype.name for t in tensors], shapes, hash_only=hash_only, separate_state=True), None


def _tf_variable(variable: Any) -> Any:
    inner = getattr(variable, "_value", None)
    import tensorflow as tf

    return variable if isinstance(variable, tf.Variable) or inner is None else inner


def _global_generator() -> Any:
    try:
        from keras.src.backend.common import global_state
        from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    except ImportError:
        return None
    return global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)

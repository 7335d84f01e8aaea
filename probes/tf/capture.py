"""What TensorFlow and Keras do while a step is traced or run: layer calls, gradient functions, random draws.

TF has no module hooks, so for the length of a run four entry points are wrapped, each a thin pass-through
while `active` is off:
- `keras.layers.Layer.__call__`: which layer is running (the module stack), which graph ops it created (op
  id ranges while tracing) and what it returned;
- the gradient registry's `lookup`: which backward ops each gradient function created, and for which
  forward op (this is how a backward `Mul` is tied to the forward `Mul` of softmax by log_softmax);
- Keras's backend random functions: every draw with its seed source (SeedGenerator, int seed, global);
- Keras's `make_default_seed`: the integer seeds Keras draws from Python's `random` when a layer or
  initializer is built without a seed. Their order is the Keras 3 counterpart of a seed offset.
Raw TF random draws (stateful random ops, `tf.random.Generator`) are wrapped by repro_audit.probes.tf.stateful_random.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RANDOM_FUNCTIONS = ("normal", "uniform", "truncated_normal", "categorical", "randint", "dropout", "shuffle",
                    "gamma", "binomial", "beta")


@dataclass
class LayerCall:
    path: str
    call: int
    type: str
    start: int  # graph op ids in (start, end] were created by this call (0, 0 when eager)
    end: int = 0
    outputs: list[tuple[str, Any]] = field(default_factory=list)
    activation: str | None = None  # `__name__` of the layer's activation function (Dense(activation="relu"))
    input_ids: tuple[int, ...] = ()  # id() of the tensors of the first argument: what a Dropout passes on
    input_ops: tuple[str | None, ...] = ()  # type of the op behind each of them (None when eager)


@dataclass
class GradientCall:
    forward_op: Any  # the forward tf.Operation whose gradient function ran
    start: int
    end: int


@dataclass
class RandomCall:
    op: str
    generator: str
    ordered: bool  # Keras's ordered SeedGenerator.next (counter + 1) or the global generator's scramble
    module: str | None
    phase: str
    count: Any  # int, or a tensor while tracing a dynamic shape
    state: np.ndarray | None  # seed state before the draw (None while tracing: rebuilt from the step's start)
    seed_object: Any = None
    ops_before: int = 0
    seeds_before: int = 0  # Keras default seeds drawn before the call (its place in the seed stream)
    kind: str = "keras"  # or "tf-op-seed" (a stateful TF random op), "tf-random-generator"
    seed: tuple[int, int] | None = None  # tf-op-seed: the op's (seed, seed2)
    stream: str | None = None  # tf-op-seed: the op's name (traced) or scope and type (eager); a Generator's variable
    position: int | None = None  # eager tf-op-seed: runs of its kernel before (traced: counted per execution)
    state_tensor: Any = None  # traced tf.random.Generator draw: its state before, returned by the step


@dataclass
class SeedOwner:
    """What was being constructed when Keras drew a default seed: the seed's user (an initializer or a
    SeedGenerator) and the innermost layer around it, so a seed no variable consumed still has a module."""

    kind: str | None
    layer: Any = None


def seed_owner(frame: Any, depth: int = 16) -> SeedOwner:
    owner = SeedOwner(None)
    from keras.src.layers.layer import Layer

    for _ in range(depth):
        if frame is None:
            break
        if frame.f_code.co_name == "__init__":
            obj = frame.f_locals.get("self")
            if isinstance(obj, Layer):
                owner.layer = obj
                break
            if obj is not None and owner.kind is None:
                owner.kind = type(obj).__name__
        frame = frame.f_back
    return owner


def graph_mark() -> int:
    """Id of the last op created in the current graph (0 when executing eagerly): ops created later have
    larger ids. Not the number of ops: a tf.function graph skips ids (captures), so counts drift from ids."""
    import tensorflow as tf

    if tf.executing_eagerly():
        return 0
    return last_op_id(tf.compat.v1.get_default_graph())


_LAST_IDS: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def last_op_id(graph: Any) -> int:
    """The largest op id in `graph`. Its op map is unordered, so this walks on from the last answer over the
    ids of the ops added since (they are larger), instead of taking the max of every id at every mark."""
    nodes = graph._nodes_by_id
    count = len(nodes)
    seen, last = _LAST_IDS.get(graph, (0, 0))
    if count < seen:  # ops were removed: start again
        seen, last = count, max(nodes.keys(), default=0)
    probe = last
    while seen < count:
        probe += 1
        if probe in nodes:
            seen, last = seen + 1, probe
    _LAST_IDS[graph] = (count, last)
    return last


class Capture:
    """Switched on around tracing, eager steps and the build; collects calls until `take`."""

    def __init__(self) -> None:
        self.active = False
        self.keep_outputs = True
        self.phase = "build"
        self.layer_paths: dict[int, str] = {}
        self.generator_names: dict[int, str] = {}
        self.stack: list[str] = []
        self.layer_calls: list[LayerCall] = []
        self.gradient_calls: list[GradientCall] = []
        self.random_calls: list[RandomCall] = []
        self.default_seeds: list[int] = []  # every seed Keras drew from Python's random, in order
        self.seed_owners: list[SeedOwner] = []  # who drew each of them
        # Keras creates its global seed generator at the first unseeded draw, inside a step: its state at
        # creation ([seed, 0]), which no snapshot before the step could hold.
        self.created_generator_states: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self._in_random = False
        self._restore: list[Callable[[], None]] = []

    @property
    def current_module(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def reset(self) -> None:
        self.stack = []
        self.layer_calls = []
        self.gradient_calls = []
        self.random_calls = []
        self._counts = {}

    # -- installing ------------------------------------------------------------------------------------

    def install(self) -> None:
        from repro_audit.probes.tf.stateful_random import StatefulRandomWatch

        self._wrap_gradient_registry()
        self._restore.extend(StatefulRandomWatch(self).install())
        try:
            import keras  # noqa: F401
        except ImportError:
            return
        self._wrap_layer_call()
        self._wrap_keras_random()

    def uninstall(self) -> None:
        for restore in reversed(self._restore):
            restore()
        self._restore = []

    def __enter__(self) -> Capture:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _wrap_gradient_registry(self) -> None:
        # Registry has __slots__, so the class method is wrapped and asks which registry it serves.
        from tensorflow.python.framework import ops, registry

        gradients = ops._gradient_registry
        original = registry.Registry.lookup
        capture = self

        def lookup(self: Any, name: str) -> Any:
            function = original(self, name)
            if self is not gradients or not capture.active or function is None:
                return function
            return _RecordedGradient(function, capture)

        registry.Registry.lookup = lookup
        self._restore.append(lambda: setattr(registry.Registry, "lookup", original))

    def _wrap_layer_call(self) -> None:
        from keras.src.layers.layer import Layer

        original = Layer.__call__
        capture = self

        def __call__(layer: Any, *args: Any, **kwargs: Any) -> Any:
            if not capture.active:
                return original(layer, *args, **kwargs)
            return capture._layer_call(original, layer, args, kwargs)

        Layer.__call__ = __call__
        self._restore.append(lambda: setattr(Layer, "__call__", original))

    def _wrap_keras_random(self) -> None:
        from keras.src.backend.tensorflow import random as backend_random
        from keras.src.random import seed_generator

        for name in RANDOM_FUNCTIONS:
            original = getattr(backend_random, name, None)
            if original is None:
                continue
            setattr(backend_random, name, self._random_wrapper(original, f"keras.random.{name}"))
            self._restore.append(lambda name=name, original=original: setattr(backend_random, name, original))
        for module in (seed_generator, backend_random):
            original_seed = getattr(module, "make_default_seed", None)
            if original_seed is None:
                continue
            module.make_default_seed = self._seed_wrapper(original_seed)
            self._restore.append(lambda module=module, original=original_seed:
                                 setattr(module, "make_default_seed", original))

    # -- the wrappers' bodies --------------------------------------------------------------------------

    def _layer_call(self, original: Callable[..., Any], layer: Any, args: Any, kwargs: Any) -> Any:
        path = self.layer_paths.get(id(layer))
        if path is None:
            path = f"<{type(layer).__name__}:{getattr(layer, 'name', '?')}>"
        count = self._counts.get(path, 0)
        self._counts[path] = count + 1
        call = LayerCall(path, count, type(layer).__name__, graph_mark())
        self.layer_calls.append(call)
        self.stack.append(path)
        try:
            output = original(layer, *args, **kwargs)
        finally:
            self.stack.pop()
        call.end = graph_mark()
        if self.keep_outputs:
            call.outputs = _flatten_outputs(output)
            call.activation = getattr(getattr(layer, "activation", None), "__name__", None)
            first = args[0] if args else kwargs.get("inputs")
            inputs = [tensor for _, tensor in _flatten_outputs(first)]
            call.input_ids = tuple(id(tensor) for tensor in inputs)
            call.input_ops = tuple(_op_type(tensor) for tensor in inputs)
        return output

    def _random_wrapper(self, original: Callable[..., Any], label: str) -> Callable[..., Any]:
        signature = inspect.signature(original)
        capture = self

        def random_function(*args: Any, **kwargs: Any) -> Any:
            if not capture.active or capture._in_random or capture._symbolic_build():
                return original(*args, **kwargs)
            seed = signature.bind_partial(*args, **kwargs).arguments.get("seed")
            generator, ordered, state, seed_object = capture._seed_source(seed)
            ops_before = graph_mark()
            capture._in_random = True
            try:
                result = original(*args, **kwargs)
            finally:
                capture._in_random = False
            capture.random_calls.append(RandomCall(
                op=label, generator=generator, ordered=ordered, module=capture.current_module,
                phase=capture.phase, count=result_count(result), state=state, seed_object=seed_object,
                ops_before=ops_before, seeds_before=len(capture.default_seeds)))
            return result

        return random_function

    def _seed_wrapper(self, original: Callable[[], int]) -> Callable[[], int]:
        capture = self

        def make_default_seed() -> int:
            seed = original()
            capture.default_seeds.append(int(seed))
            capture.seed_owners.append(seed_owner(sys._getframe(1)))
            return seed

        return make_default_seed

    def _symbolic_build(self) -> bool:
        """Keras builds layers by tracing their call in a scratch graph first: those draws are never run."""
        import tensorflow as tf

        return self.phase == "build" and not tf.executing_eagerly()

    def _seed_source(self, seed: Any) -> tuple[str, bool, np.ndarray | None, Any]:
        """(generator name, ordered, state before or None while tracing, the generator object)."""
        import tensorflow as tf
        from keras.src.random.seed_generator import SeedGenerator, global_seed_generator

        if isinstance(seed, int):
            return "keras-int-seed", True, np.array([seed, 0], dtype=np.int64), None
        if seed is None:
            seeds_before = len(self.default_seeds)
            seed, ordered = global_seed_generator(), False
            name = "keras-global-seed-generator"
            if len(self.default_seeds) > seeds_before:  # created just now, from the seed it drew
                self.created_generator_states[name] = np.array([self.default_seeds[-1], 0], dtype=np.int64)
        elif isinstance(seed, SeedGenerator):
            ordered = True
            name = self.generator_names.get(id(seed)) or f"keras-seed-generator:{seed.name}"
        else:
            return "unknown", True, None, None
        state = np.array(seed.state.value.numpy()) if tf.executing_eagerly() else None
        return name, ordered, state, seed


class _RecordedGradient:
    """A gradient function that notes which ops it created and for which forward op."""

    def __init__(self, function: Callable[..., Any], capture: Capture) -> None:
        self.function = function
        self.capture = capture

    def __call__(self, op: Any, *grads: Any) -> Any:
        start = graph_mark()
        result = self.function(op, *grads)
        end = graph_mark()
        forward = _forward_op(op)
        if forward is not None and end > start:
            self.capture.gradient_calls.append(GradientCall(forward, start, end))
        return result


def _forward_op(op: Any) -> Any:
    """The graph op behind a gradient function's `op`: a real Operation, or eager backprop's _MockOp.

    The tape keeps outputs only for ops whose gradient needs them (not Mul's), so without outputs the
    forward op is the consumer of the same inputs with the same type.
    """
    if hasattr(op, "node_def") and hasattr(op, "graph"):
        return op
    for tensor in getattr(op, "outputs", None) or ():
        producer = getattr(tensor, "op", None)
        if producer is not None and hasattr(producer, "node_def"):
            return producer
    inputs = list(getattr(op, "inputs", None) or ())
    if not inputs or any(t is None for t in inputs) or not all(hasattr(t, "op") and hasattr(t.op, "node_def") for t in inputs):
        return None
    wanted = [(t.op._id, t.value_index) for t in inputs]
    for consumer in inputs[0].consumers():
        if consumer.type == op.type and [(t.op._id, t.value_index) for t in consumer.inputs] == wanted:
            return consumer
    return None


def result_count(result: Any) -> Any:
    """Number of values drawn: an int, or a size tensor while tracing a dynamic shape."""
    import tensorflow as tf

    if not isinstance(result, tf.Tensor):
        return 0
    if result.shape.is_fully_defined():
        return int(np.prod(result.shape.as_list()))
    return tf.size(result)


def _op_type(tensor: Any) -> str | None:
    try:
        return str(tensor.op.type)
    except (AttributeError, ValueError):  # an EagerTensor has no op
        return None


def _flatten_outputs(output: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(suffix, tensor) of a layer's output: "" for a single tensor, "[i]" / "[key]" inside structures."""
    import tensorflow as tf

    if isinstance(output, tf.Tensor):
        return [(prefix, output)]
    found: list[tuple[str, Any]] = []
    if isinstance(output, dict):
        for key in output:
            found.extend(_flatten_outputs(output[key], f"{prefix}[{key}]"))
    elif isinstance(output, (list, tuple)):
        for index, item in enumerate(output):
            found.extend(_flatten_outputs(item, f"{prefix}[{index}]"))
    return found


def initializer_in_stack(depth: int = 20) -> str | None:
    """Name of the initializer that produced the value of a variable being created (from the call stack)."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            break
        initializer = frame.f_locals.get("initializer")
        if initializer is not None:
            if isinstance(initializer, str):
                return initializer
            return type(initializer).__name__ if not inspect.isfunction(initializer) else initializer.__name__
        frame = frame.f_back
    return None

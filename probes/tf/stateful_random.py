"""Raw TF random draws in eager and tf.function steps: stateful random ops and `tf.random.Generator`.

A stateful random op (`tf.random.normal`, `tf.random.uniform`, `tf.nn.dropout` without a seed...) draws
from a stream that its kernel holds, seeded by the op's (seed, seed2) from `random_seed.get_seed`. An
unseeded op takes seed2 from a counter: in eager mode the context's op-seed generator (one draw per op),
in a tf.function the number of unseeded random ops traced before it in that graph. So an added random op
moves the op seeds of every later unseeded op. Ops with the same seed pair continue one stream: eager
kernels are cached per seed pair, a traced op's kernel lives as long as its concrete function.

A `tf.random.Generator` keeps its state in a variable; every draw reads it and skips it on by the number
of values (`Generator.skip`, which returns the state before the skip: the draw's seed state, a tensor
while tracing that the step returns among its outputs).

The wrappers record a `RandomCall` per draw while a step runs or is traced, and pass through otherwise (the
build's draws stay out of the initialisation record, whose seeds are Keras's). In a tf.function they run
at trace time only: running the traced step executes no Python of theirs.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

from repro_audit.probes.tf.capture import Capture, RandomCall, result_count

OP_SEED = "tf-op-seed"
GENERATOR = "tf-random-generator"

# gen_random_ops wrapper -> the op type it creates (the STATEFUL_RANDOM_OPS of repro_audit.probes.tf.graph_record).
STATEFUL_OP_FUNCTIONS = {"random_standard_normal": "RandomStandardNormal", "random_uniform": "RandomUniform",
                         "random_uniform_int": "RandomUniformInt", "truncated_normal": "TruncatedNormal",
                         "multinomial": "Multinomial", "random_shuffle": "RandomShuffle",
                         "random_gamma": "RandomGamma", "random_poisson_v2": "RandomPoissonV2",
                         "parameterized_truncated_normal": "ParameterizedTruncatedNormal"}
GENERATOR_METHODS = ("normal", "uniform", "truncated_normal", "uniform_full_int", "make_seeds", "split")


class StatefulRandomWatch:
    """Installs the wrappers; counts eager kernel runs per seed pair (their position in the stream; runs
    before the first step, in the build, are not seen)."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.kernel_runs: dict[tuple[Any, ...], int] = {}
        self.generator_names: dict[int, str] = {}
        self._restore: list[Callable[[], None]] = []

    def install(self) -> list[Callable[[], None]]:
        """Wrap the stateful op functions and Generator.skip; returns how to undo it."""
        from tensorflow.python.ops import gen_random_ops, stateful_random_ops

        restore: list[Callable[[], None]] = []
        for name, op_type in STATEFUL_OP_FUNCTIONS.items():
            original = getattr(gen_random_ops, name, None)
            if original is None:
                continue
            setattr(gen_random_ops, name, self._op_wrapper(original, op_type))
            restore.append(functools.partial(setattr, gen_random_ops, name, original))
        skip = stateful_random_ops.Generator.skip
        stateful_random_ops.Generator.skip = self._skip_wrapper(skip)
        restore.append(functools.partial(setattr, stateful_random_ops.Generator, "skip", skip))
        return restore

    def _op_wrapper(self, original: Callable[..., Any], op_type: str) -> Callable[..., Any]:
        signature = inspect.signature(original)
        watch = self

        def stateful_op(*args: Any, **kwargs: Any) -> Any:
            capture = watch.capture
            if not capture.active or capture._in_random or capture.phase == "build":
                return original(*args, **kwargs)
            arguments = signature.bind_partial(*args, **kwargs).arguments
            seed = (int(arguments.get("seed") or 0), int(arguments.get("seed2") or 0))
            result = original(*args, **kwargs)
            capture.random_calls.append(watch._op_call(op_type, seed, result))
            return result

        return stateful_op

    def _op_call(self, op_type: str, seed: tuple[int, int], result: Any) -> RandomCall:
        capture = self.capture
        if _is_eager(result):
            from tensorflow.python.eager import context

            stream = f"{context.context().scope_name}{op_type}"
            key = (op_type, result.dtype.name, *seed)
            position: int | None = self.kernel_runs.get(key, 0)
            self.kernel_runs[key] = (position or 0) + 1
        else:
            stream, position = result.op.name, None  # counted per execution of the traced step
        return RandomCall(op=op_type, generator=OP_SEED, ordered=True, module=capture.current_module,
                          phase=capture.phase, count=result_count(result), state=None, kind=OP_SEED,
                          seed=seed, stream=stream, position=position)

    def _skip_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        watch = self

        def skip(generator: Any, delta: Any) -> Any:
            capture = watch.capture
            if not capture.active or capture._in_random or capture.phase == "build":
                return original(generator, delta)
            before = original(generator, delta)  # RngReadAndSkip returns the state before the skip
            capture.random_calls.append(watch._generator_call(generator, delta, before))
            return before

        return skip

    def _generator_call(self, generator: Any, delta: Any, before: Any) -> RandomCall:
        import numpy as np
        import tensorflow as tf

        capture = self.capture
        static = tf.get_static_value(delta)
        count: Any = int(static) if static is not None else tf.cast(delta, tf.int64)
        eager = _is_eager(before)
        method = _generator_method(sys._getframe(2))
        return RandomCall(op=f"tf.random.Generator.{method}", generator=self._generator_name(generator),
                          ordered=True, module=capture.current_module, phase=capture.phase, count=count,
                          state=np.array(before.numpy(), dtype=np.int64) if eager else None, kind=GENERATOR,
                          stream=str(getattr(generator.state, "name", "")),
                          state_tensor=None if eager else before)

    def _generator_name(self, generator: Any) -> str:
        """`tf-random-generator:global`, else numbered in the order of first draw (stable from run to run:
        object ids are not)."""
        from tensorflow.python.ops import stateful_random_ops

        if generator is stateful_random_ops.global_generator:  # never create it here: get_global_generator would
            return f"{GENERATOR}:global"
        key = id(generator.state)
        name = self.generator_names.get(key)
        if name is None:
            name = self.generator_names[key] = f"{GENERATOR}:{len(self.generator_names)}"
        return name


def _is_eager(tensor: Any) -> bool:
    from tensorflow.python.framework import ops

    return isinstance(tensor, ops.EagerTensor)


def _generator_method(frame: Any, depth: int = 6) -> str:
    """The public Generator method behind a skip (normal, uniform...), else `skip` (called directly)."""
    for _ in range(depth):
        if frame is None:
            break
        if frame.f_code.co_name in GENERATOR_METHODS and "self" in frame.f_locals:
            return str(frame.f_code.co_name)
        frame = frame.f_back
    return "skip"

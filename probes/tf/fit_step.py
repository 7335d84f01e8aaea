"""Keras's train step made to return what a trace needs, as extra outputs of the same function.

`model.fit` calls `model.train_function(iterator)`; `FitStep.install` replaces it with one made by Keras's
own `_make_function` around `recorded_step`, which runs `model.train_step` unchanged (the hooks of
probes/tf/fit_hooks catch its terms, total and gradients) and then packs terms, gradients and the state
after the update with `repro_audit.probes.tf.tensors.pack`, the packing of the runner's steps. The callback gets the
Keras logs as before; the packed outputs wait in `pending` until `on_train_batch_end` reads them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro_audit.audit.errors import RunFailed
from repro_audit.probes.tf.fit_hooks import FitHooks, StepSink
from repro_audit.probes.tf.model_tree import ModelTree
from repro_audit.probes.tf.optimizer_state import KerasOptimizerView
from repro_audit.probes.tf.repeated_unpack import unpack
from repro_audit.probes.tf.tensors import Layout, hash_only, pack, plan_layout, to_numpy


@dataclass
class FitStepOutputs:
    """One step's outputs, read back on the host: summaries and values by key, the batch, the term order."""

    summaries: dict[str, dict[str, Any]]
    values: dict[str, np.ndarray]
    batch: dict[str, np.ndarray]
    term_names: list[str]
    weights: dict[str, float]
    missing_gradients: list[str]


@dataclass
class _TraceInfo:
    layout: Layout
    term_names: list[str]
    weights: dict[str, float]
    missing_gradients: list[str]
    batch_names: list[str]


class FitStep:
    """The recorded train step of one model for one `fit`; `install` and `remove` bracket it."""

    def __init__(self, model: Any, tree: ModelTree) -> None:
        import tensorflow as tf

        self.tf, self.model, self.tree = tf, model, tree
        self.params = tree.parameters()
        self.buffers = [v for v in tree.variables if v.kind == "buffer"]
        names: dict[int, str] = {}
        for tracked in tree.variables:
            names[id(tracked.variable)] = tracked.name
            names[id(tracked.tf_variable)] = tracked.name
        self.names = names
        self.optimizer_view = KerasOptimizerView(model.optimizer, names)
        self.sink = StepSink()
        self.hooks = FitHooks(model, self.sink)
        self.traces: dict[int, _TraceInfo] = {}
        self.pending: dict[str, Any] | None = None
        self._eager_packers: dict[tuple[str, ...], Any] = {}
        self._state: list[tuple[str, Any]] | None = None
        self._original: Any = None

    def install(self, on_failure: Callable[[BaseException], None]) -> None:
        """Hooks in, then a train function that keeps the extra outputs and reports a failed step."""
        self.hooks.install()
        self._original = self.model.train_function
        made = self.model._make_function(self._recorded_step)
        tf = self.tf

        def train_function(iterator: Any) -> Any:
            try:
                outputs = made(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                raise  # the end of an epoch, as Keras signals it
            except BaseException as exc:
                on_failure(exc)
                raise
            self.pending = {key: value for key, value in outputs.items() if key != "logs"}
            return outputs["logs"]

        self.model.train_function = train_function

    def remove(self) -> None:
        if self._original is not None or self.model.train_function is not None:
            self.model.train_function = self._original
        self._original = None
        self.hooks.remove()

    # -- inside the step (traced once, or run eagerly) -------------------------------------------------

    def _recorded_step(self, data: Any) -> dict[str, Any]:
        tf = self.tf
        from keras.utils import unpack_x_y_sample_weight

        self.sink.reset()
        logs = self.model.train_step(data)
        sink = self.sink
        if sink.total is None or not sink.gradients:
            raise RunFailed("repro-audit's fit callback could not see the train step's loss and gradients: a "
                            "custom train_step must call optimizer.scale_loss and optimizer.apply_gradients "
                            "as Keras's own does")
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        batch = _named_batch({"x": x, "y": y, "sample_weight": sample_weight})
        terms = list(sink.terms)
        by_variable = {id(variable): gradient for gradient, variable in sink.gradients}
        named: list[tuple[str, Any]] = [(f"loss_terms/{name}", tf.reshape(sink.terms[name], []))
                                        for name in terms]
        named.append(("total", tf.reshape(sink.total, [])))
        missing = []
        for tracked in self.params:
            gradient = by_variable.get(id(tracked.variable), by_variable.get(id(tracked.tf_variable)))
            if gradient is None:
                missing.append(tracked.name)
            else:
                named.append((f"gradients/{tracked.name}", tf.convert_to_tensor(gradient)))
        named += [(key, tf.identity(_tf_variable(variable))) for key, variable in self.state_variables()]
        named.append(("optimizer_lr", tf.convert_to_tensor(self.optimizer_view.learning_rate())))
        trace_id = len(self.traces) + 1
        info = _TraceInfo(Layout([], [], [], {}, []), terms, dict(sink.weights), missing, [n for n, _ in batch])
        if tf.executing_eagerly():
            info.layout, packed = self._pack_eagerly(named)
        else:
            info.layout, packed = pack(named, hash_only=hash_only, separate_state=True)
            self.traces[trace_id] = info
        if tf.executing_eagerly():
            self.traces = {0: info}  # an eager step's layout is used once, right after it
            trace_id = 0
        # Tuples, not lists: Keras passes the outputs through tf.experimental.Optional, which would try to
        # stack a list into one tensor.
        return {"logs": logs, "packed": _tupled(packed), "trace_id": tf.constant(trace_id),
                "batch": tuple(tensor for _, tensor in batch)}

    def state_variables(self) -> list[tuple[str, Any]]:
        """Parameters, buffers and optimizer state after the update, under their keys in the trace; the
        optimizer's slots exist only once its first step has built it."""
        if self._state is None or not self.model.optimizer.built:
            found = [(f"parameters/{p.name}", p.variable) for p in self.params]
            found += [(f"buffers/{b.name}", b.variable) for b in self.buffers]
            found += [(f"optimizer/{param}/{key}", slot) for param, key, slot in self.optimizer_view.slots()]
            found += [(f"optimizer/{key}", variable) for key, variable in self.optimizer_view.scalars()]
            self._state = found
        return self._state

    def _pack_eagerly(self, named: list[tuple[str, Any]]) -> tuple[Layout, dict[str, Any]]:
        """An eager step packs through a tf.function: hundreds of eager reshapes cost more than the step."""
        tf = self.tf
        keys = tuple(key for key, _ in named)
        tensors = [tf.convert_to_tensor(tensor) for _, tensor in named]
        layout = plan_layout(keys, [t.dtype.name for t in tensors], [tuple(int(n) for n in t.shape) for t in tensors],
                             hash_only=hash_only, separate_state=True)
        packer = self._eager_packers.get(keys)
        if packer is None:
            packer = tf.function(functools.partial(_pack_keys, keys), autograph=False)
            self._eager_packers[keys] = packer
        return layout, packer(tensors)

    # -- on the host, after the step --------------------------------------------------------------------

    def read(self) -> FitStepOutputs:
        """Summaries and values of the step that just ran (its outputs aliasing variables are let go)."""
        outputs, self.pending = self.pending, None
        if outputs is None:
            raise RunFailed("repro-audit's fit callback found no recorded step: was model.train_function "
                            "replaced after fit began?")
        info = self.traces[int(to_numpy(outputs["trace_id"]))]
        summaries, values = unpack(info.layout, outputs["packed"], keep_values=True)
        batch = {name: np.asarray(to_numpy(tensor)) for name, tensor in zip(info.batch_names, outputs["batch"])}
        return FitStepOutputs(summaries, values, batch, info.term_names, info.weights, info.missing_gradients)


def _pack_keys(keys: tuple[str, ...], tensors: list[Any]) -> dict[str, Any]:
    return pack(list(zip(keys, tensors)), hash_only=hash_only, separate_state=True)[1]


def _tupled(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _tupled(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(item) for item in value)
    return value


def _named_batch(batch: dict[str, Any]) -> list[tuple[str, Any]]:
    """Batch tensors named as a recipe's dict batch names them (`x`, `y.out_a`, `sample_weight`)."""
    from repro_audit.probes.tf.tensors import named_tensors

    return [(name, tensor) for name, tensor in named_tensors(batch) if tensor is not None]


def _tf_variable(variable: Any) -> Any:
    import tensorflow as tf

    inner = getattr(variable, "_value", None)
    return variable if isinstance(variable, tf.Variable) or inner is None else inner

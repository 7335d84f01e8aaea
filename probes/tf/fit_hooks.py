"""What Keras's own train step computes and never returns: per-output loss terms, the total, the gradients.

`model.fit` runs `Model.train_step` inside a tf.function; a callback sees only the running means in `logs`.
These hooks are installed on the model's compiled loss and optimizer for the life of one `fit` and hand
the tensors of the step being traced (or run, with `run_eagerly=True`) to a `StepSink`, so the recorded
step can return them as extra outputs of the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

SINGLE_TERM = "loss"  # the term name of a model compiled with one loss


@dataclass
class StepSink:
    """Tensors of one traced (or eager) train step, filled by the hooks below."""

    terms: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    total: Any = None
    gradients: list[tuple[Any, Any]] = field(default_factory=list)  # (gradient, variable)

    def reset(self) -> None:
        self.terms, self.weights, self.total, self.gradients = {}, {}, None, []


class TermProbe:
    """Stands in for one loss function of a compiled loss: returns its value unchanged, and keeps it."""

    def __init__(self, loss_fn: Any, name: str, weight: float, sink: StepSink) -> None:
        self.loss_fn, self.name, self.weight, self.sink = loss_fn, name, weight, sink

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        value = self.loss_fn(y_true, y_pred, sample_weight)
        self.sink.terms[self.name] = value
        self.sink.weights[self.name] = self.weight
        return value

    def __getattr__(self, name: str) -> Any:  # Keras reads the wrapped loss's name, dtype, reduction
        return getattr(self.loss_fn, name)


class FitHooks:
    """Install and remove the hooks; every change is undone by `remove`, in reverse order."""

    def __init__(self, model: Any, sink: StepSink) -> None:
        self.model, self.sink = model, sink
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        optimizer = self.model.optimizer
        self._patch(optimizer, "apply_gradients", self._apply_gradients(optimizer.apply_gradients))
        self._patch(optimizer, "scale_loss", self._scale_loss(optimizer.scale_loss))
        compiled = getattr(self.model, "_compile_loss", None)
        if compiled is not None:
            if compiled.built:
                self._probe_terms(compiled)
            else:
                self._patch(compiled, "build", self._build_then_probe(compiled, compiled.build))

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        had_own = name in vars(owner)
        previous = vars(owner).get(name)
        setattr(owner, name, replacement)

        def undo() -> None:
            if had_own:
                setattr(owner, name, previous)
            else:
                delattr(owner, name)

        self._undo.append(undo)

    def _apply_gradients(self, original: Callable[..., Any]) -> Callable[..., Any]:
        sink = self.sink

        def apply_gradients(grads_and_vars: Iterable[tuple[Any, Any]], *args: Any, **kwargs: Any) -> Any:
            pairs = list(grads_and_vars)  # Keras passes a zip: read it once, pass it on as a list
            sink.gradients.extend(pairs)
            return original(pairs, *args, **kwargs)

        return apply_gradients

    def _scale_loss(self, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        sink = self.sink

        def scale_loss(loss: Any) -> Any:
            sink.total = loss  # the total Keras backpropagates, before any loss scaling
            return original(loss)

        return scale_loss

    def _build_then_probe(self, compiled: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def build(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self._probe_terms(compiled)
            return result

        return build

    def _probe_terms(self, compiled: Any) -> None:
        flat = list(compiled._flat_losses or [])
        single = len(flat) == 1
        probed = []
        for entry in flat:
            name = SINGLE_TERM if single or not entry.name else str(entry.name)
            weight = 1.0 if entry.loss_weights is None else float(entry.loss_weights)
            probed.append(entry._replace(loss=TermProbe(entry.loss, name, weight, self.sink)))
        compiled._flat_losses = probed
        self._undo.append(lambda: setattr(compiled, "_flat_losses", flat))

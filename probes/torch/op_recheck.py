"""Run every dispatched aten op twice and keep the ones whose two results differ bitwise.

The second execution sees the same inputs (clones of those the op writes; the originals are unchanged for
the others) and the same generator state: a random op's generator is put back to where the first
execution started it, and afterwards to where the first execution left it, so the run's random stream is
the one an ordinary run draws. The run continues on the first execution's results. Bitwise means bit
patterns (a NaN equals the same NaN), since this is a determinism tool; how far apart the two results are
is measured only for the ops that differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from repro_audit.probes.torch.bit_compare import bitwise_equal, distance
from repro_audit.probes.torch.dispatch_capture import _source_generator
from repro_audit.probes.torch.known_nondeterministic import known_nondeterministic
from repro_audit.probes.torch.op_sites import user_frame
from repro_audit.probes.torch.tensors import dtype_name

# Ops whose output is uninitialised memory: two executions differ by design, never by kernel.
UNINITIALISED = frozenset({"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
                           "aten::new_empty_strided", "aten::empty_permuted", "aten::resize_",
                           "aten::set_", "aten::_local_scalar_dense"})
# Ops not executed a second time, because their result can depend on nothing but their arguments:
# - views (`func.is_view`: view, transpose, expand, split, detach...): the output is the input's storage
#   with new sizes, strides and offset, computed from metadata; no kernel writes a value, so there is
#   nothing that could differ (and comparing would read the input's memory against itself);
# - constant fills: every element is set to the one given scalar, with no reduction and no order to vary.
CONSTANT_FILLS = frozenset({"aten::zeros", "aten::ones", "aten::full", "aten::zeros_like", "aten::ones_like",
                            "aten::full_like", "aten::fill_", "aten::zero_", "aten::scalar_tensor",
                            "aten::new_zeros", "aten::new_ones", "aten::new_full"})
_WRITTEN: dict[Any, list[int]] = {}  # per op overload: the arguments its schema says it writes


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors in an op's arguments or results (tuples, lists, dicts of them): pytree's generality costs
    more than the op itself on small tensors, and aten arguments nest no deeper than this."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_of(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_of(item)]
    return []


@dataclass
class OpDisagreement:
    """One op whose second execution differed from its first."""

    op: str
    step: int
    phase: str
    module: str | None
    source: dict[str, Any] | None
    dtype: str
    shape: list[int]
    distance: dict[str, Any]
    node: str | None = None
    # The autograd node the op belongs to (its output's grad_fn in forward, the running node in backward),
    # held until the step's loss terms say which of them it feeds.
    autograd_node: Any = None
    output: Any = None
    loss_terms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "step": self.step, "phase": self.phase, "module": self.module,
                "source": self.source, "dtype": self.dtype, "shape": self.shape, "distance": self.distance,
                "backward_node": self.node, "loss_terms": self.loss_terms}


class OpRecheckMode(TorchDispatchMode):
    """While active, every aten op runs twice; `disagreements` and `known` collect what was found."""

    def __init__(self, *, module_of: Callable[[], str | None]) -> None:
        super().__init__()
        self.module_of = module_of
        self.step = 0
        self.phase = "forward"
        self.ops_checked = 0
        self.ops_not_rerun = 0  # views and constant fills (CONSTANT_FILLS): nothing in them can differ
        self.disagreements: list[OpDisagreement] = []
        self.known: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        # Forward: where each autograd node was created, so a backward op can name its module and line.
        self._origins: dict[Any, tuple[str | None, dict[str, Any] | None]] = {}
        self._pending: list[tuple[torch.Tensor, str | None, dict[str, Any] | None]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        self._resolve_pending()
        name = func._schema.name
        if name in UNINITIALISED:
            return func(*args, **kwargs)
        node = torch._C._current_autograd_node()
        phase = "backward" if node is not None else self.phase
        if func.is_view or name in CONSTANT_FILLS:
            out = func(*args, **kwargs)
            self.ops_not_rerun += 1
            if phase == "forward" and isinstance(out, torch.Tensor) and any(
                    t.requires_grad for t in tensors_of((args, kwargs))):
                # Its autograd node (a view's backward) may run ops worth naming: keep where it was made.
                self._pending.append((out, self.module_of(), user_frame(2)))
            return out
        written = _WRITTEN.get(func)
        if written is None:
            written = _WRITTEN[func] = _written_arguments(func)
        again_args, again_kwargs = _clones_of_written(func, written, args, kwargs)
        flat_inputs = tensors_of((args, kwargs))
        device = flat_inputs[0].device if flat_inputs else _device_kwarg(kwargs)
        generator = (_source_generator(kwargs.get("generator"), device)
                     if torch.Tag.nondeterministic_seeded in func.tags else None)
        before = generator.get_state() if generator is not None else None
        out = func(*args, **kwargs)
        if generator is not None:
            after = generator.get_state()
            generator.set_state(before)
            again = func(*again_args, **again_kwargs)
            generator.set_state(after)
        else:
            again = func(*again_args, **again_kwargs)
        self.ops_checked += 1
        first = tensors_of(out)
        second = tensors_of(again)
        module = self.module_of() if phase == "forward" else None
        source = None
        for a, b in zip(first, second):
            if not bitwise_equal(a, b):
                if phase == "backward":
                    module, source = self._origins.get(node, (None, None))
                elif source is None:
                    source = user_frame(2)
                self.disagreements.append(OpDisagreement(
                    op=name, step=self.step, phase=phase, module=module, source=source, dtype=dtype_name(a.dtype),
                    shape=list(a.shape), distance=distance(a, b), node=node.name() if node is not None else None,
                    autograd_node=node, output=a if phase == "forward" else None))
                break
        device_type = device.type if device is not None else "cpu"
        entry = known_nondeterministic(name, device_type, args, kwargs)
        if entry is not None:
            self._note_known(entry, name, device_type, phase, node, module)
        if phase == "forward" and first and any(t.requires_grad for t in flat_inputs):
            self._pending.append((first[0], module, source or user_frame(2)))
        return out

    def finish_forward(self) -> None:
        self._resolve_pending()

    def attribute_loss_terms(self, terms: dict[str, torch.Tensor]) -> None:
        """Name, for each disagreement of this step, the loss terms whose graph holds its autograd node.

        Forward ops are matched by their output's grad_fn, backward ops by the node that ran them; an op
        that feeds no term (the optimizer's update, anything under no_grad) gets none."""
        todo = [d for d in self.disagreements if d.step == self.step and not d.loss_terms]
        for item in todo:
            if item.autograd_node is None and item.output is not None:
                item.autograd_node = item.output.grad_fn
        if not any(item.autograd_node is not None for item in todo):
            return
        reach = {term: _graph_nodes(value.grad_fn) for term, value in terms.items()
                 if isinstance(value, torch.Tensor) and value.grad_fn is not None}
        for item in todo:
            if item.autograd_node is not None:
                item.loss_terms = sorted(term for term, nodes in reach.items() if item.autograd_node in nodes)

    def end_step(self) -> None:
        """Drop what was held for attribution: tensors and nodes must not outlive their step."""
        for item in self.disagreements:
            item.autograd_node, item.output = None, None
        self._origins = {}
        self._pending = []

    def _note_known(self, entry: Any, name: str, device_type: str, phase: str, node: Any,
                    module: str | None) -> None:
        if phase == "backward":
            module = self._origins.get(node, (None, None))[0]
        key = (name, device_type, module, phase)
        if key not in self.known:
            self.known[key] = {"op": name, "device": device_type, "module": module, "phase": phase,
                               "alternative": entry.alternative, "note": entry.note, "calls": 0,
                               "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
        self.known[key]["calls"] += 1

    def _resolve_pending(self) -> None:
        # Autograd sets grad_fn only after the dispatch call returns, so outputs are looked at one op later.
        for tensor, module, source in self._pending:
            node = tensor.grad_fn
            if node is not None and node not in self._origins:
                self._origins[node] = (module, source)
        self._pending = []


def _written_arguments(func: Any) -> list[int]:
    return [index for index, argument in enumerate(func._schema.arguments)
            if argument.alias_info is not None and argument.alias_info.is_write]


def _clones_of_written(func: Any, written: list[int], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The second execution's arguments: clones of what the op writes, the originals for the rest."""
    if not written:
        return args, kwargs
    names = {func._schema.arguments[index].name for index in written}
    clone = lambda value: value.clone() if isinstance(value, torch.Tensor) else value
    new_args = tuple(tree_map(clone, value) if index in written else value for index, value in enumerate(args))
    new_kwargs = {key: tree_map(clone, value) if key in names else value for key, value in kwargs.items()}
    return new_args, new_kwargs


def _graph_nodes(root: Any) -> set[Any]:
    seen: set[Any] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return seen


def _device_kwarg(kwargs: dict[str, Any]) -> torch.device | None:
    device = kwargs.get("device")
    return torch.device(device) if device is not None else None

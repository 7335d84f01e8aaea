"""Dispatch-level capture of aten ops: the op graph of step 1, and creation and initialisation of tensors.

A TorchDispatchMode sees every aten op, including random ops hidden inside C++ kernels, but costs tens of
microseconds per op; so it is switched on only while the recipe builds the model and during step 1.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from repro_audit.probes.torch.generator_states import torch_state
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.storage_origins import StorageOrigins

class DispatchCapture(TorchDispatchMode):
    """Records ops (with module, phase and producers) and/or storage events while active."""

    def __init__(self, ledger: RandomLedger, module_of: Callable[[], str | None], *, record_ops: bool,
                 track_storage: bool, watch: Any = None) -> None:
        """`watch`, a RandomWatch, is told where each random op left its generator."""
        super().__init__()
        self.ledger = ledger
        self.watch = watch
        self.module_of = module_of
        self.record_ops = record_ops
        self.track_storage = track_storage
        self.phase = "forward"
        self.ops: list[dict[str, Any]] = []
        self.node_to_op: dict[Any, int] = {}
        self._producers: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._pending: list[tuple[int, torch.Tensor]] = []
        # Storage events while building: which op created each storage, and which fill its values came from.
        self.storage = StorageOrigins()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        self._resolve_pending()
        name = func._schema.name
        flat_inputs = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
        is_random = torch.Tag.nondeterministic_seeded in func.tags
        generator = kwargs.get("generator")
        device = flat_inputs[0].device if flat_inputs else _device_kwarg(kwargs)
        source = _source_generator(generator, device) if is_random else None
        before = torch_state(source) if source is not None else None
        out = func(*args, **kwargs)
        flat_outputs = [value for value in tree_flatten(out)[0] if isinstance(value, torch.Tensor)]
        entry = None
        if is_random:
            after = torch_state(source) if source is not None else None
            filled = flat_inputs[0] if name.endswith("_") and flat_inputs else (flat_outputs or [None])[0]
            count = filled.numel() if filled is not None else 0
            generator_name = self.ledger.generator_name(generator, device)
            if before is None or after != before:  # a random op on an empty tensor draws nothing
                entry = self.ledger.record(op=name, count=count, generator=generator_name, before=before,
                                           after=after)
            if self.watch is not None and after is not None:
                if generator is not None:
                    self.watch.track(generator, generator_name)
                self.watch.synced(generator_name, after)
                if entry is not None:
                    self.watch.watch_region()
        if self.track_storage:
            self.storage.observe(name, flat_inputs, flat_outputs, entry, self.ledger.offsets)
        if self.record_ops:
            self._record_op(func, name, flat_inputs, flat_outputs)
        return out

    def finish_forward(self) -> None:
        self._resolve_pending()

    def _record_op(self, func: Any, name: str, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        index = len(self.ops)
        record: dict[str, Any] = {
            "index": index,
            "op": name,
            "overload": func._overloadname,
            "phase": self.phase,
            "module": self.module_of(),
            "loss_term": None,
            "shapes": [list(t.shape) for t in outputs],
            "input_shapes": [list(t.shape) for t in inputs],
            "inputs_from": [self._producers.get(t, -1) for t in inputs],
        }
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            if node is not None:
                record["node"] = node.name()
                record["forward_op"] = self.node_to_op.get(node)
        self.ops.append(record)
        for tensor in outputs:
            self._producers[tensor] = index
            if self.phase == "forward":
                self._pending.append((index, tensor))

    def _resolve_pending(self) -> None:
        # Autograd sets grad_fn only after the dispatch call returns, so outputs are looked at one op later.
        for index, tensor in self._pending:
            node = tensor.grad_fn
            if node is not None and node not in self.node_to_op:
                self.node_to_op[node] = index
        self._pending = []


def _source_generator(generator: torch.Generator | None, device: torch.device | None) -> torch.Generator | None:
    """The generator a random op draws from: its `generator=`, else its device's default one."""
    if generator is not None:
        return generator
    if device is None or device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index or 0]
    return None


def _device_kwarg(kwargs: dict[str, Any]) -> torch.device | None:
    device = kwargs.get("device")
    return torch.device(device) if device is not None else None

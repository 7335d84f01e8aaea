"""Every op that writes one watched tensor during one step: what the cross-rank zoom-in compares.

A desync between ranks is a parameter (or an optimizer state tensor) that one rank changed differently: the
op that did it is an op whose mutable argument (`Tensor(a!)`, an `out=`) lives in that tensor's storage.
The mode sees every op of the step but looks only at the written arguments, and hashes only the watched
tensor, after the op: the rest of the step runs at near full speed. Each write gets the op's name, the phase
of the step it ran in, the watched tensor's hash after it, and the user's stack where it was called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from repro_audit.probes.torch.op_hashes import output_hash
from repro_audit.probes.torch.op_sites import user_stack

MAX_WRITES = 1_000  # writes kept per watched tensor: a step that writes one tensor more often is cut, and says so
STACK_FRAMES = 6


class TensorWriters(TorchDispatchMode):
    """Records the ops that write any of the watched tensors, per watched name, in execution order.

    `resolve(name)` returns the tensor behind a name, or None while it does not exist yet (Adam creates its
    state in the first step); unresolved names are looked up again before each op.
    """

    def __init__(self, names: list[str], resolve: Callable[[str], torch.Tensor | None]) -> None:
        super().__init__()
        self.resolve = resolve
        self.phase = "forward"
        self.writes: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        self.cut: list[str] = []
        self._storages: dict[int, tuple[str, torch.Tensor]] = {}
        self._unresolved = list(names)
        self._written: dict[Any, tuple[tuple[int, str], ...]] = {}  # op -> its mutable arguments (index, name)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self._unresolved:
            self._resolve()
        out = func(*args, **kwargs)
        if self._storages:
            for name, tensor in self._targets_written(func, args, kwargs):
                self._note(name, tensor, func)
        return out

    def _resolve(self) -> None:
        for name in list(self._unresolved):
            tensor = self.resolve(name)
            pointer = _storage(tensor)
            if tensor is not None and pointer:
                self._storages[pointer] = (name, tensor)
                self._unresolved.remove(name)

    def _targets_written(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
        mutable = self._written.get(func)
        if mutable is None:
            mutable = self._written[func] = tuple(
                (index, argument.name) for index, argument in enumerate(func._schema.arguments)
                if argument.alias_info is not None and argument.alias_info.is_write)
        found: dict[str, Any] = {}
        for index, name in mutable:
            value = args[index] if index < len(args) else kwargs.get(name)
            for tensor in value if isinstance(value, (list, tuple)) else [value]:
                target = self._storages.get(_storage(tensor))
                if target is not None:
                    found.setdefault(*target)
        return list(found.items())

    def _note(self, name: str, tensor: torch.Tensor, func: Any) -> None:
        writes = self.writes[name]
        if len(writes) >= MAX_WRITES:
            if name not in self.cut:
                self.cut.append(name)
            return
        writes.append({"index": len(writes), "op": func._schema.name, "phase": self.phase,
                       "hash": output_hash(tensor.detach()), "stack": user_stack(3, limit=STACK_FRAMES)})


def _storage(value: Any) -> int:
    """The address of a plain tensor's storage; 0 for anything else (a wrapper subclass, an empty tensor)."""
    if not isinstance(value, torch.Tensor):
        return 0
    try:
        return int(value.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return 0

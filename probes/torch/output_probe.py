"""What the recorder learns from module outputs, taken the moment each module returns.

Summarising an output (hash and statistics) and counting what training health needs (saturated and dead
units) right in the forward hook means the tensor is read while it is still in the CPU cache, and none is
kept to the end of the step: autograd frees activations during backward, and a recorder that held them all
would raise the step's memory peak by most of the forward pass.

An output returned again by an enclosing module (a block handing on its last layer's output) is summarised
once. For health it is described once, under the innermost module holding it, the last call in execution
order to do so, as before.
"""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from repro_audit.probes.torch.health import ACTIVATION_TYPES, activation_counts, output_kind
from repro_audit.probes.torch.tensors import FLOAT_DTYPES, NATIVE_KINDS, SummaryBatch


@dataclass(slots=True)
class _Seen:
    """An output already summarised; `ref` tells whether that tensor still exists (its memory not reused)."""

    position: int
    ref: weakref.ref[torch.Tensor]
    owner: Any = None  # the ModuleCall health describes it under
    index: int = 0


class OutputProbe:
    """Summaries and activation counts of every module output of a step."""

    def __init__(self, *, health: bool, activation_types: Mapping[str, str] | None = None,
                 probe_only: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        self.health = health
        self.types = {**ACTIVATION_TYPES, **(activation_types or {})}
        self.probe_only = probe_only
        self._batch = SummaryBatch(count_zeros=False)  # reused step after step
        self.start()

    def start(self) -> None:
        self._batch.clear()
        self._seen: dict[tuple[Any, ...], _Seen] = {}
        self._calls: list[Any] = []

    def observe(self, call: Any, tensors: Sequence[torch.Tensor]) -> None:
        """At the end of `call`: summarise its outputs (or find them summarised) and count for health.

        This runs after every module call, between the model's own ops, with the CPU caches full of
        tensors: each attribute read here costs about a microsecond, so each is read once."""
        self._calls.append(call)
        with self.probe_only():
            for index, tensor in enumerate(tensors):
                numel = tensor.numel()
                dtype = tensor.dtype
                if tensor.layout is not torch.strided or numel == 0:
                    key: tuple[Any, ...] = (id(tensor),)  # no storage to compare: never merged
                    plain = False
                else:
                    # Same storage, layout, dtype and version: the same values (an in-place change bumps
                    # the version).
                    shape, address, cpu = tensor.shape, tensor.data_ptr(), tensor.is_cpu
                    conjugate, negative = tensor.is_conj(), tensor.is_neg()
                    key = (address, shape, tensor.stride(), dtype, tensor._version, conjugate, negative,
                           None if cpu else tensor.device)
                    plain = cpu and not conjugate and not negative and dtype in NATIVE_KINDS
                seen = self._seen.get(key)
                if seen is None or seen.ref() is None:
                    if plain and self._batch.native and tensor.is_contiguous():
                        position = self._batch.add_native(address, numel, dtype, shape)
                    else:
                        position = self._batch.add(tensor)
                    seen = self._seen[key] = _Seen(position, weakref.ref(tensor))
                call.summary_positions.append(seen.position)
                if self.health and numel and dtype in FLOAT_DTYPES:
                    owner = seen.owner
                    if owner is None or owner.position <= call.position:
                        self._claim(seen, call, index, tensor)

    def finish(self) -> None:
        """Fetch what is still pending and hand every call its summaries and activation counts."""
        summaries = self._batch.finish()
        for call in self._calls:
            call.summaries = [summaries[position] for position in call.summary_positions]
            call.activation_counts = {index: row.tolist() if isinstance(row, torch.Tensor) else row
                                      for index, row in call.activation_counts.items()}
        self._calls = []

    def _claim(self, seen: _Seen, call: Any, index: int, tensor: torch.Tensor) -> None:
        """Health describes the output under the call that started last among those returning it."""
        if seen.owner is not None:
            seen.owner.activation_counts.pop(seen.index, None)
            seen.owner.activation_kinds.pop(seen.index, None)
        seen.owner, seen.index = call, index
        kind = output_kind(call, index, self.types)
        if kind is None:
            call.activation_counts[index] = None
        else:
            with torch.no_grad():  # where torch ops count (no native kernel), they are no part of the graph
                call.activation_counts[index] = activation_counts(tensor, kind)
        call.activation_kinds[index] = kind

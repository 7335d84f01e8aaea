"""Summaries of the same tensors at every step: parameters, their gradients, the optimizer's state.

They keep their shapes and layouts step after step, and parameters and optimizer state their addresses
too (a gradient freed by `zero_grad(set_to_none=True)` comes back elsewhere), so the kernel's argument
arrays and each tensor's fixed part of its record (shape, dtype, numel) are made once and reused for as
long as every tensor's shape, dtype and layout still match, with the addresses updated; when one does
not, they are made again. The statistics of all tensors become records together
(`tensors.native_records`). Tensors the kernel cannot take (no compiler, GPU, half types, views that are
not contiguous) go through `tensors.summarize`, with the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from repro_audit.probes.common.native_summary import BYTES, PreparedBatch, kernel
from repro_audit.probes.torch.distributed import gathered
from repro_audit.probes.torch.tensors import (
    NATIVE_KINDS,
    NUMPY_NAMES,
    dtype_name,
    hash_prefix,
    native_layout,
    native_records,
    summarize,
    tensor_hashes,
)

_Layout = tuple[torch.Size, torch.dtype, bool, bool, bool]  # what `native_layout` depends on


class RepeatedSummaries:
    """`summarize` (or, with `hash_only`, `tensor_hashes`) of a list of tensors that recurs every step."""

    def __init__(self, *, count_zeros: bool = True, hash_only: bool = False) -> None:
        self.count_zeros = count_zeros
        self.hash_only = hash_only
        self._layouts: list[_Layout] | None = None
        self._addresses: list[int] = []
        self._chosen: list[int] = []  # positions the kernel takes
        self._batch: PreparedBatch | None = None
        self._fixed: list[tuple[list[int], str, int]] = []  # shape, dtype, numel of each chosen tensor

    def summaries(self, tensors: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """The trace's summary record of each tensor, as `summarize` makes it."""
        tensors = [gathered(tensor) for tensor in tensors]
        batch = self._prepared(tensors)
        if batch is None:
            return summarize(tensors, count_zeros=self.count_zeros)
        batch.run(zeros=self.count_zeros, threads=torch.get_num_threads())
        found = self._records(batch)
        records: list[dict[str, Any]] = [{}] * len(tensors)
        for position, record in zip(self._chosen, found):
            records[position] = record
        if len(self._chosen) < len(tensors):
            rest = sorted(set(range(len(tensors))) - set(self._chosen))
            for position, record in zip(rest, summarize([tensors[i] for i in rest], count_zeros=self.count_zeros)):
                records[position] = record
        return records

    def hashes(self, tensors: Sequence[torch.Tensor]) -> list[str]:
        """`tensor_hash` of each tensor."""
        tensors = [gathered(tensor) for tensor in tensors]
        batch = self._prepared(tensors)
        if batch is None:
            return tensor_hashes(tensors)
        batch.run(zeros=False, threads=torch.get_num_threads())
        found: list[str] = [""] * len(tensors)
        for position, digest in zip(self._chosen, batch.digests()):
            found[position] = digest
        if len(self._chosen) < len(tensors):
            rest = sorted(set(range(len(tensors))) - set(self._chosen))
            for position, digest in zip(rest, tensor_hashes([tensors[i] for i in rest])):
                found[position] = digest
        return found

    # -- parts -----------------------------------------------------------------------------------------

    def _prepared(self, tensors: Sequence[torch.Tensor]) -> PreparedBatch | None:
        """The batch for these tensors: the last one where every layout is as it was (moved to where the
        tensors are now), else a new one."""
        native = kernel()
        if native is None:
            return None
        try:
            addresses = [t.data_ptr() for t in tensors]
        except RuntimeError:  # a sparse or other storage-less tensor has no data pointer
            return None
        layouts = [(t.shape, t.dtype, t.is_contiguous(), t.is_cpu, t.is_neg()) for t in tensors]
        if layouts == self._layouts and self._batch is not None:
            if addresses != self._addresses:
                self._batch.move([addresses[i] for i in self._chosen])
                self._addresses = addresses
            return self._batch
        self._layouts, self._addresses = layouts, addresses
        kinds = NUMPY_NAMES if self.hash_only else NATIVE_KINDS
        chosen = [i for i, t in enumerate(tensors) if t.dtype in kinds and native_layout(t)]
        self._chosen = chosen
        self._fixed = [(list(tensors[i].shape), dtype_name(tensors[i].dtype), tensors[i].numel()) for i in chosen]
        self._batch = PreparedBatch(native, [
            (addresses[i], tensors[i].numel() * tensors[i].element_size(), BYTES, hash_prefix(tensors[i]))
            if self.hash_only else
            (addresses[i], tensors[i].numel(), NATIVE_KINDS[tensors[i].dtype], hash_prefix(tensors[i]))
            for i in chosen])
        return self._batch

    def _records(self, batch: PreparedBatch) -> list[dict[str, Any]]:
        return native_records(self._fixed, batch.digests(), batch.stats, batch.counts, count_zeros=self.count_zeros)

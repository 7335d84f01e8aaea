"""Summaries of the same tensors at every step: parameters, their gradients, the optimizer's state.

These sit at the same addresses with the same layouts step after step (a gradient freed by
`zero_grad(set_to_none=True)` mostly comes back where it was), so the kernel's argument arrays and each
tensor's fixed part of its record (shape, dtype, numel) are made once and reused for as long as every
tensor's address, shape, dtype and layout still match; when one does not, they are made again. The
statistics of all tensors become records in a few numpy operations instead of a loop of float arithmetic
per tensor. Tensors the kernel cannot take (no compiler, GPU, half types, views that are not contiguous)
go through `tensors.summarize`, with the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from probes.common.native_summary import BYTES, PreparedBatch, kernel
from probes.torch.tensors import (
    NATIVE_KINDS,
    NUMPY_NAMES,
    dtype_name,
    hash_prefix,
    native_layout,
    summarize,
    tensor_hashes,
)

_Layout = tuple[int, torch.Size, torch.dtype, bool, bool]


class RepeatedSummaries:
    """`summarize` (or, with `hash_only`, `tensor_hashes`) of a list of tensors that recurs every step."""

    def __init__(self, *, count_zeros: bool = True, hash_only: bool = False) -> None:
        self.count_zeros = count_zeros
        self.hash_only = hash_only
        self._layouts: list[_Layout] | None = None
        self._chosen: list[int] = []  # positions the kernel takes, largest first
        self._batch: PreparedBatch | None = None
        self._fixed: list[tuple[list[int], str, int]] = []  # shape, dtype, numel of each chosen tensor
        self._numels = np.zeros(0)

    def summaries(self, tensors: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """The trace's summary record of each tensor, as `summarize` makes it."""
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
        """The batch for these tensors: the last one where every layout is as it was, else a new one."""
        native = kernel()
        if native is None:
            return None
        try:
            layouts = [(t.data_ptr(), t.shape, t.dtype, t.is_contiguous(), t.is_cpu) for t in tensors]
        except RuntimeError:  # a sparse or other storage-less tensor has no data pointer
            return None
        if layouts == self._layouts:
            return self._batch
        self._layouts = layouts
        kinds = NUMPY_NAMES if self.hash_only else NATIVE_KINDS
        chosen = [i for i, t in enumerate(tensors) if t.dtype in kinds and native_layout(t)]
        chosen.sort(key=lambda i: -tensors[i].numel())  # largest first: the threads finish together
        self._chosen = chosen
        self._fixed = [(list(tensors[i].shape), dtype_name(tensors[i].dtype), tensors[i].numel()) for i in chosen]
        self._numels = np.array([numel for _, _, numel in self._fixed], dtype=np.float64)
        self._batch = PreparedBatch(native, [
            (tensors[i].data_ptr(), tensors[i].numel() * tensors[i].element_size(), BYTES, hash_prefix(tensors[i]))
            if self.hash_only else
            (tensors[i].data_ptr(), tensors[i].numel(), NATIVE_KINDS[tensors[i].dtype], hash_prefix(tensors[i]))
            for i in chosen])
        return self._batch

    def _records(self, batch: PreparedBatch) -> list[dict[str, Any]]:
        """Records from the batch's arrays: [min, max, sum, sum of squares] and [zeros, NaN, Inf] per row."""
        stats, counts = batch.stats, batch.counts
        with np.errstate(invalid="ignore"):
            norms = np.sqrt(stats[:, 3])
            means = stats[:, 2] / self._numels
            max_abs = np.maximum(np.abs(stats[:, 0]), np.abs(stats[:, 1]))
        max_abs[counts[:, 1] > 0] = np.nan
        zeros = counts[:, 0].tolist() if self.count_zeros else [None] * batch.n
        return [{"shape": list(shape), "dtype": dtype, "numel": numel, "hash": digest, "norm": norm,
                 "min": low, "max": high, "mean": mean, "max_abs": largest, "nan": nan, "inf": inf, "zeros": zero}
                for (shape, dtype, numel), digest, norm, low, high, mean, largest, nan, inf, zero in zip(
                    self._fixed, batch.digests(), norms.tolist(), stats[:, 0].tolist(), stats[:, 1].tolist(),
                    means.tolist(), max_abs.tolist(), counts[:, 1].tolist(), counts[:, 2].tolist(), zeros)]

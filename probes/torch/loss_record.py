"""Named loss terms of one step, over however many forward passes (micro-batches) the step makes.

A step that accumulates gradients over micro-batches computes each term once per micro-batch; recording
only the last one would hide a term that differs in the first. Each term keeps its value per micro-batch;
`value` is their mean (what one full batch would give), `hash` covers every micro-batch's exact value.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from repro_audit.probes.common.hashing import hash_array
from repro_audit.probes.torch.tensors import as_numpy


class LossTermRecord:
    """The `loss_terms` and `total_loss` of a step record, micro-batch by micro-batch."""

    def __init__(self, weight_of: Callable[[str], float]) -> None:
        self.weight_of = weight_of
        self.micro_batches = 0
        self._values: dict[str, list[np.ndarray]] = {}
        self._totals: list[float] = []

    def add(self, terms: Mapping[str, torch.Tensor], total: torch.Tensor) -> None:
        """One forward pass's terms (detached reads only: this runs with the probes' dispatch off)."""
        self.micro_batches += 1
        for name, value in terms.items():
            self._values.setdefault(str(name), []).append(as_numpy(value.detach().reshape(())).reshape(1).copy())
        self._totals.append(float(total.detach()))

    def record(self) -> dict[str, Any]:
        """`loss_terms` for the step record."""
        records: dict[str, Any] = {}
        for name, values in self._values.items():
            joined = np.concatenate(values)
            single = len(values) == 1
            entry: dict[str, Any] = {
                "weight": self.weight_of(name),
                "value": float(joined[0]) if single else float(joined.astype(np.float64).mean()),
                "hash": hash_array(joined.reshape(()) if single else joined),
            }
            if self.micro_batches > 1:
                entry["micro_values"] = [float(v) for v in joined]
            records[name] = entry
        return records

    def last_hash(self, name: str) -> str | None:
        """Hash of the term's value in the latest forward pass (what a replay of that pass must give)."""
        values = self._values.get(name)
        return hash_array(values[-1].reshape(())) if values else None

    def total(self) -> float:
        return float(sum(self._totals))

    def values(self) -> dict[str, np.ndarray]:
        """Each term's values, one per micro-batch, for the values file."""
        return {name: np.concatenate(values) for name, values in self._values.items()}

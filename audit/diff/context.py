"""Everything comparators share: both traces, the tolerance, the steps both recorded, matched names, values.

Names are matched once here so that every category reports a renamed parameter under the same pair of
names, and tensor values are opened only for tensors whose hashes already differ.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from repro_audit.audit.diff.matching import NameMatch, match_names
from repro_audit.audit.diff.values import Tolerance, array_evidence, summaries_equal, summary_evidence
from repro_audit.audit.trace import Trace


@dataclass
class CompareContext:
    trace_a: Trace
    trace_b: Trace
    tolerance: Tolerance = field(default_factory=Tolerance)
    _values_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @cached_property
    def steps_a(self) -> dict[int, dict[str, Any]]:
        return {int(record["step"]): record for record in self.trace_a.steps}

    @cached_property
    def steps_b(self) -> dict[int, dict[str, Any]]:
        return {int(record["step"]): record for record in self.trace_b.steps}

    @cached_property
    def common_steps(self) -> list[int]:
        """Steps recorded by both runs; a run that stopped early limits the comparison to these."""
        return sorted(set(self.steps_a) & set(self.steps_b))

    def step_pairs(self) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
        for step in self.common_steps:
            yield step, self.steps_a[step], self.steps_b[step]

    @cached_property
    def parameters(self) -> NameMatch:
        """Parameters and buffers of A matched to B, by name, then as renames of the same shape."""
        names_a, signature_a = _tensor_names(self.trace_a)
        names_b, signature_b = _tensor_names(self.trace_b)
        signatures = {"a": signature_a, "b": signature_b}
        return match_names(names_a, names_b, signature=lambda side, name: signatures[side].get(name))

    def tensor_divergence(self, key: str, step: int, summary_a: dict[str, Any] | None,
                          summary_b: dict[str, Any] | None) -> dict[str, Any] | None:
        """Evidence that two recorded tensors differ, or None when they agree within the tolerance.

        `key` names the tensor in the values files ("gradients/<name>" of run A's name); values are read
        only when both runs kept them, and only for this tensor.
        """
        if summary_a is None and summary_b is None:
            return None
        if summary_a is not None and summary_b is not None and summary_a.get("hash") == summary_b.get("hash"):
            return None
        values = self.values_pair(key, step)
        if values is not None:
            evidence = array_evidence(values[0], values[1], self.tolerance)
            return evidence if evidence.get("mismatched") else None
        if summaries_equal(summary_a, summary_b, self.tolerance):
            return None
        return summary_evidence(summary_a, summary_b)

    def tensor_divergences(self, items: list[tuple[str, int, Any, Any]]) -> list[dict[str, Any] | None]:
        """`tensor_divergence` of many tensors, in threads: numpy releases the GIL, so reading and comparing
        the values of large tensors uses every core."""
        if len(items) < 2 or not any(self._needs_values(a, b) for _, _, a, b in items):
            return [self.tensor_divergence(*item) for item in items]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            return list(pool.map(lambda item: self.tensor_divergence(*item), items))

    @staticmethod
    def _needs_values(summary_a: Any, summary_b: Any) -> bool:
        return bool(summary_a and summary_b and summary_a.get("hash") != summary_b.get("hash"))

    def values_pair(self, key: str, step: int) -> tuple[np.ndarray, np.ndarray] | None:
        file_a, file_b = self._values_file("a", step), self._values_file("b", step)
        if file_a is None or file_b is None:
            return None
        kind, _, name = key.partition("/")
        name_b = self.parameters.a_to_b.get(name, name) if kind in {"gradients", "parameters", "buffers", "initial"} else name
        array_a, array_b = file_a.get(key), file_b.get(f"{kind}/{name_b}")
        if array_a is None or array_b is None:
            return None
        return array_a, array_b

    def _values_file(self, side: str, step: int) -> Any:
        with self._values_lock:
            cache = self.__dict__.setdefault("_values_cache", {})
            if (side, step) not in cache:
                trace = self.trace_a if side == "a" else self.trace_b
                values = trace.values(step)
                if values is not None:
                    values.keys()  # parse the header once, under the lock
                cache[(side, step)] = values
            return cache[(side, step)]


def _tensor_names(trace: Trace) -> tuple[list[str], dict[str, Any]]:
    """Parameter and buffer names in creation order, with (shape, dtype) as their rename signature."""
    names: dict[str, Any] = {}
    aliases = trace.initialisation.get("tied") or {}  # tied weights: one tensor, matched under its own name
    tensors = sorted(trace.initialisation.get("tensors") or [], key=creation_order)
    for tensor in tensors:
        names.setdefault(str(tensor["name"]), (tuple(tensor.get("shape") or ()), tensor.get("dtype")))
    for module in trace.structure.get("modules") or []:
        for entry in (module.get("parameters") or []) + (module.get("buffers") or []):
            if str(entry["name"]) in aliases:
                continue
            names.setdefault(str(entry["name"]), (tuple(entry.get("shape") or ()), entry.get("dtype")))
    for record in trace.steps[:1]:
        for name, summary in (record.get("parameters") or {}).items():
            names.setdefault(str(name), (tuple((summary or {}).get("shape") or ()), (summary or {}).get("dtype")))
    return list(names), names


def creation_order(tensor: dict[str, Any]) -> tuple[bool, int]:
    """Sort key of a recorded tensor by creation index; tensors whose creation was not observed (created
    before recording, or outside the recipe's build) come last."""
    index = tensor.get("creation_index")
    return (not isinstance(index, int), index if isinstance(index, int) else 0)

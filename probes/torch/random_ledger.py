"""The ledger of random draws: every draw, with its module, phase, generator, count and stream position.

A draw is known by the generator state it moved: `rng_fingerprint` is the hash of the state before it,
`rng_after` the state after, so two runs made the same draw exactly when both agree, whatever op (or
aliased function, or fused kernel) asked for it. `offset_before` counts values drawn from a generator since
the run started, for explanations ("starts 132 values later"): the CPU Mersenne Twister has no readable
offset, so it is the sum of what each random op drew. A draw whose size is not known (an op that moved the
generator without being a random op, or numpy's and Python's generators) leaves `count` null and makes
later offsets of that generator approximate (`offset_exact: false`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from repro_audit.probes.common.hashing import hash_bytes


class RandomLedger:
    """Counts draws per generator and keeps the entries of the current phase."""

    def __init__(self, module_of: Callable[[], str | None]) -> None:
        self.module_of = module_of
        self.offsets: dict[str, int] = {}
        self.inexact: set[str] = set()
        self.entries: list[dict[str, Any]] = []
        self.phase = "build"
        self._custom_names: dict[int, str] = {}
        self.custom_generators: list[torch.Generator] = []  # kept so a replayed step can rewind them too

    def take_entries(self) -> list[dict[str, Any]]:
        entries, self.entries = self.entries, []
        return entries

    def generator_name(self, generator: torch.Generator | None, device: torch.device | None) -> str:
        if generator is None:
            if device is None or device.type == "cpu":
                return "cpu"
            return f"{device.type}:{device.index or 0}"
        if generator is torch.default_generator:
            return "cpu"
        key = id(generator)
        if key not in self._custom_names:
            self._custom_names[key] = f"generator{len(self._custom_names) + 1}:{generator.device}"
            self.custom_generators.append(generator)
        return self._custom_names[key]

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Draws made inside the block (a replayed forward pass) leave no entry and move no offset."""
        offsets, inexact, count = dict(self.offsets), set(self.inexact), len(self.entries)
        try:
            yield
        finally:
            self.offsets, self.inexact = offsets, inexact
            del self.entries[count:]

    def record(self, *, op: str | None, count: int | None, generator: str, before: bytes | None,
               after: bytes | None, module: str | None | type[Ellipsis] = ...) -> dict[str, Any]:
        """One draw; `before`/`after` are the generator's raw states around it (None where unreadable)."""
        offset = self.offsets.get(generator, 0)
        entry: dict[str, Any] = {
            "index": len(self.entries),
            "op": op,
            "module": self.module_of() if module is ... else module,
            "phase": self.phase,
            "generator": generator,
            "count": None if count is None else int(count),
            "offset_before": offset,
            "rng_fingerprint": "unavailable" if before is None else hash_bytes(before),
            "rng_after": None if after is None else hash_bytes(after),
        }
        if generator in self.inexact:
            entry["offset_exact"] = False
        if count is None:
            self.inexact.add(generator)
        else:
            self.offsets[generator] = offset + int(count)
        self.entries.append(entry)
        return entry

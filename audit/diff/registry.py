"""Comparators, one per trace category, registered in one place.

A comparator reads both traces through the CompareContext and returns the divergences of its category
(nothing when the runs agree) and how many items it compared. Adding a category means adding one
comparator module and one presenter section; registering a category twice is our bug, not a silent override.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from repro_audit.audit.divergence import Divergence, count_diverged
from repro_audit.audit.errors import InternalError

if TYPE_CHECKING:
    from repro_audit.audit.diff.context import CompareContext


# Divergences of one category kept whole in a comparison; the rest are counted. Two runs that drift apart
# differ in every tensor at every step (200 tensors x 200 steps, three categories: 120,000 divergences,
# gigabytes of evidence) and the explanation reads the first ones.
MAX_KEPT_PER_CATEGORY = 2000


class KeptDivergences(list[Divergence]):
    """A category's divergences in the order found (steps in order): the first `limit` kept, the rest only
    counted, with the steps they fall on."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = MAX_KEPT_PER_CATEGORY if limit is None else limit
        self.omitted = 0
        self.omitted_steps: list[int] = []  # first and last step of what was omitted

    def append(self, divergence: Divergence) -> None:
        if len(self) < self.limit:
            super().append(divergence)
            return
        self.omitted += 1
        if divergence.step is not None:
            steps = self.omitted_steps
            self.omitted_steps = [min(steps[0], divergence.step), max(steps[1], divergence.step)] if steps \
                else [divergence.step, divergence.step]

    def extend(self, divergences: Iterable[Divergence]) -> None:
        for divergence in divergences:
            self.append(divergence)


@dataclass
class CategoryResult:
    """What one comparator found: divergences and the number of items it looked at, counting every item
    either run has (one only in run B is compared, and differs), so that `diverged` never exceeds it."""

    divergences: KeptDivergences = field(default_factory=KeptDivergences)
    compared: int = 0

    @property
    def diverged(self) -> int:
        """Items that differ, each once (count_diverged), and those only counted past the cap."""
        return sum(count_diverged(self.divergences).values()) + self.divergences.omitted


Comparator = Callable[["CompareContext"], CategoryResult]

_COMPARATORS: dict[str, Comparator] = {}


def comparator(category: str) -> Callable[[Comparator], Comparator]:
    """Register `function` as the comparator of `category`."""

    def register(function: Comparator) -> Comparator:
        if category in _COMPARATORS:
            raise InternalError(f"two comparators registered for category {category!r}")
        _COMPARATORS[category] = function
        return function

    return register


def comparators() -> dict[str, Comparator]:
    """All comparators, importing the modules that register them."""
    from repro_audit.audit.diff import (  # noqa: F401  (registration happens on import)
        compare_graph,
        compare_initialisation,
        compare_run,
        compare_steps,
        compare_training,
    )

    return dict(_COMPARATORS)

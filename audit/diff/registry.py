"""Comparators, one per trace category, registered in one place.

A comparator reads both traces through the CompareContext and returns the divergences of its category
(nothing when the runs agree) and how many items it compared. Adding a category means adding one
comparator module and one presenter section; registering a category twice is our bug, not a silent override.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from audit.divergence import Divergence
from audit.errors import InternalError

if TYPE_CHECKING:
    from audit.diff.context import CompareContext


@dataclass
class CategoryResult:
    """What one comparator found: divergences and the number of items it looked at."""

    divergences: list[Divergence] = field(default_factory=list)
    compared: int = 0


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
    from audit.diff import (  # noqa: F401  (registration happens on import)
        compare_graph,
        compare_initialisation,
        compare_run,
        compare_steps,
        compare_training,
    )

    return dict(_COMPARATORS)

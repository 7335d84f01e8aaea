"""Delta debugging (Zeller and Hildebrandt's ddmin): a 1-minimal subset of changes that still reproduces.

`reproduces` takes several subsets and answers for each, so one round's subsets and complements run side
by side on the executor instead of one after another. Answers are cached by subset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
Test = Callable[[list[list[T]]], list[bool]]


def ddmin(changes: Sequence[T], reproduces: Test[T]) -> list[T]:
    """The smallest subset found such that removing any one change no longer reproduces (1-minimal);
    `changes` as a whole must reproduce."""
    current = list(changes)
    granularity = 2
    while len(current) >= 2:
        subsets = _split(current, granularity)
        complements = [[c for c in current if c not in subset] for subset in subsets] if granularity > 2 else []
        answers = reproduces(subsets + complements)
        found = next((subset for subset, ok in zip(subsets, answers) if ok), None)
        if found is not None:
            current, granularity = found, 2
            continue
        found = next((c for c, ok in zip(complements, answers[len(subsets):]) if ok), None)
        if found is not None:
            current, granularity = found, max(granularity - 1, 2)
            continue
        if granularity >= len(current):
            break
        granularity = min(len(current), 2 * granularity)
    return current


def _split(items: list[T], parts: int) -> list[list[T]]:
    """`parts` consecutive chunks as even as possible (the first ones one longer)."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return [chunk for chunk in chunks if chunk]

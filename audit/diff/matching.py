"""Match named items (parameters, modules, loss terms) of run A to run B: same, added, removed, renamed, moved.

Names are matched first as they are. What is left is matched as renamed when it has the same shape and the
same place among the leftovers, after auto-generated counters are taken out of the names (Keras calls the
second Dense layer `dense_1`, and adding a layer before it makes it `dense_2`). Order changes among the
matched items are "moved": the same item created or run at another position, our seed-offset story.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# "dense_1" -> "dense", "conv2d_3/kernel" -> "conv2d/kernel": the counters Keras and TF append to names.
_AUTO_COUNTER = re.compile(r"_\d+(?=$|[./:])")


@dataclass
class NameMatch:
    """How the names of one kind of item correspond between the runs."""

    pairs: list[tuple[str, str]] = field(default_factory=list)  # (name in A, name in B), in A's order
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)  # matched pairs out of their relative order

    @property
    def a_to_b(self) -> dict[str, str]:
        return dict(self.pairs)

    @property
    def b_to_a(self) -> dict[str, str]:
        return {b: a for a, b in self.pairs}


def without_counters(name: str) -> str:
    return _AUTO_COUNTER.sub("", name)


def match_names(names_a: Sequence[str], names_b: Sequence[str], *,
                signature: Callable[[str, str], Any] | None = None) -> NameMatch:
    """Match two ordered name lists. `signature(side, name)` (shape, dtype...) must agree for a rename."""
    signature = signature or (lambda side, name: None)
    set_b = set(names_b)
    # The same name with another shape is another item (Keras' dense_1 after a layer was inserted before it).
    exact = [name for name in names_a if name in set_b and signature("a", name) == signature("b", name)]
    exact_set = set(exact)
    left_a = [name for name in names_a if name not in exact_set]
    left_b = [name for name in names_b if name not in exact_set]
    renamed = _match_renames(left_a, left_b, signature)
    renamed_a = {a for a, _ in renamed}
    renamed_b = {b for _, b in renamed}
    pairs_by_a = {name: name for name in exact}
    pairs_by_a.update(dict(renamed))
    pairs = [(name, pairs_by_a[name]) for name in names_a if name in pairs_by_a]
    return NameMatch(
        pairs=pairs,
        added=[name for name in left_b if name not in renamed_b],
        removed=[name for name in left_a if name not in renamed_a],
        renamed=renamed,
        moved=_out_of_order(pairs, names_b),
    )


def _match_renames(left_a: list[str], left_b: list[str],
                   signature: Callable[[str, str], Any]) -> list[tuple[str, str]]:
    """Leftovers that are the same item under another name: same counter-free name, else same shape, in order."""
    renamed: list[tuple[str, str]] = []
    taken_b: set[str] = set()
    for key in (lambda side, name: (without_counters(name), signature(side, name)),
                lambda side, name: (_stem_depth(name), signature(side, name))):
        groups_b: dict[Any, list[str]] = {}
        for name in left_b:
            if name not in taken_b:
                groups_b.setdefault(_hashable(key("b", name)), []).append(name)
        groups_a: dict[Any, list[str]] = {}
        for name in left_a:
            if name not in {a for a, _ in renamed}:
                groups_a.setdefault(_hashable(key("a", name)), []).append(name)
        for group_key, members_a in groups_a.items():
            members_b = groups_b.get(group_key, [])
            # Only an unambiguous correspondence is a rename: as many on each side, paired in order.
            if members_b and len(members_b) == len(members_a):
                for name_a, name_b in zip(members_a, members_b):
                    renamed.append((name_a, name_b))
                    taken_b.add(name_b)
    return sorted(renamed, key=lambda pair: left_a.index(pair[0]))


def _stem_depth(name: str) -> tuple[int, str]:
    """Same nesting depth and same last component (`weight`, `kernel`): a renamed parent module."""
    parts = re.split(r"[./]", name)
    return len(parts), parts[-1]


def _out_of_order(pairs: list[tuple[str, str]], names_b: Sequence[str]) -> list[tuple[str, str]]:
    position_b = {name: index for index, name in enumerate(names_b)}
    order_b = sorted(pairs, key=lambda pair: position_b[pair[1]])
    matcher = difflib.SequenceMatcher(None, pairs, order_b, autojunk=False)
    in_order = {pairs[block.a + k] for block in matcher.get_matching_blocks() for k in range(block.size)}
    return [pair for pair in pairs if pair not in in_order]


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, tuple):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value

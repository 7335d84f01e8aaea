"""Arrange divergences into the causal tree: causes at the top, what follows from them underneath.

Inputs (environment, code, config) cannot be caused by anything recorded, so each is a root. Everything
later hangs under the nearest input difference before it; without one (same config, other results), the
first divergence is the root and everything after it is its consequence. Explanation rules have already
grouped what they recognised; their findings keep their claimed divergences as children.
"""

from __future__ import annotations

from repro_audit.audit.divergence import RUN_CATEGORIES, Divergence
from repro_audit.audit.explain.finding import Finding

INPUT_CATEGORIES = frozenset(RUN_CATEGORIES[:3])  # environment, code, config


def build_tree(divergences: list[Divergence], findings: list[Finding]) -> list[Divergence]:
    """Roots of the tree in causal order; every divergence appears exactly once."""
    claimed: set[int] = set()
    for finding in findings:
        claims = {id(d) for d in finding.claims}
        own = [child for child in finding.root.children if id(child) not in claims]
        finding.root.children = sorted(finding.claims, key=_key) + own
        claimed.update(claims)
    roots = {id(f.root): f.root for f in findings}
    pool = [d for d in divergences if id(d) not in claimed and id(d) not in roots]
    pool += [root for root in roots.values() if id(root) not in claimed]
    pool.sort(key=_key)
    top: list[Divergence] = []
    current: Divergence | None = None
    for divergence in pool:
        if divergence.category in INPUT_CATEGORIES and divergence.step is None or current is None:
            top.append(divergence)
            current = divergence
        else:
            current.children.append(divergence)
    for root in top:
        _sort_children(root)
    return top


def _sort_children(divergence: Divergence) -> None:
    divergence.children.sort(key=_key)
    for child in divergence.children:
        _sort_children(child)


def _key(divergence: Divergence) -> tuple[int, int, int, int, str]:
    step, rank, order, name = divergence.sort_key()
    # A named cause sorts before plain divergences of the same place: the sentence comes before its facts.
    return (step, rank, 0 if divergence.cause else 1, order, name)

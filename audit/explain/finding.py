"""What an explanation rule returns: a cause, and the divergences that follow from it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from repro_audit.audit.divergence import Divergence


@dataclass
class Finding:
    """`root` names the cause (its `cause`, `explanation` and `evidence` are set); `claims` are its consequences."""

    root: Divergence
    claims: list[Divergence] = field(default_factory=list)


class Claims:
    """Which divergences a rule already used, so that each one sits under exactly one cause."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def free(self, divergences: Iterable[Divergence]) -> list[Divergence]:
        return [d for d in divergences if id(d) not in self._taken]

    def take(self, finding: Finding) -> Finding:
        finding.claims = [d for d in self.free(finding.claims) if d is not finding.root]
        self._taken.add(id(finding.root))
        self._taken.update(id(d) for d in finding.claims)
        return finding

    def is_free(self, divergence: Divergence) -> bool:
        return id(divergence) not in self._taken

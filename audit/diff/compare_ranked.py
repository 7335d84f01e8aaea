"""Runs of N ranks compared: inside each run across its ranks, and run against run rank by rank.

The verdict is the first divergence in (step, rank) order over every comparison, so the report leads with
what went wrong first, whichever rank it was on. Two runs with another world size are compared over the
ranks both have; the change of world size is said, with what it does to DDP's reduction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.diff.compare import compare_traces
from repro_audit.audit.diff.compare_ranks import compare_ranks
from repro_audit.audit.divergence import Comparison
from repro_audit.audit.trace import Trace


@dataclass
class RankComparison:
    """Run B's rank against run A's same rank (`run` counts the runs of `check`, from 2)."""

    rank: int
    run: int
    comparison: Comparison


@dataclass
class RankedResult:
    """Every comparison of ranked runs, and which one holds the first divergence."""

    cross_rank: list[Comparison]  # one per run, rank 0 against the others
    rank_by_rank: list[RankComparison]
    world_sizes: list[int]
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(c.identical for c in self.cross_rank) and all(r.comparison.identical for r in self.rank_by_rank)

    def first(self) -> Comparison | None:
        """The comparison whose first divergence comes first in (step, rank) order; cross-rank findings of
        a run before run-to-run ones at the same step and rank."""
        candidates: list[tuple[tuple[int, int, int], Comparison]] = []
        for comparison in self.cross_rank:
            first = comparison.first_divergence
            if first is not None:
                step = -1 if first.step is None else first.step
                candidates.append(((step, int(first.evidence.get("rank", 0)), 0), comparison))
        for entry in self.rank_by_rank:
            first = entry.comparison.first_divergence
            if first is not None:
                candidates.append(((-1 if first.step is None else first.step, entry.rank, 1), entry.comparison))
        return min(candidates, key=lambda item: item[0])[1] if candidates else None

    def to_dict(self) -> dict[str, Any]:
        first = self.first()
        return {"identical": self.identical, "world_sizes": self.world_sizes, "notes": list(self.notes),
                "first": first.to_dict() if first is not None else None,
                "cross_rank": [c.to_dict() for c in self.cross_rank],
                "rank_by_rank": [{"rank": r.rank, "run": r.run, "comparison": r.comparison.to_dict()}
                                 for r in self.rank_by_rank]}


def compare_ranked_runs(runs: Sequence[Sequence[Trace]], *, labels: Sequence[str], **options: Any) -> RankedResult:
    """Each run's ranks against each other, then every later run against the first, rank by rank."""
    cross = [compare_ranks(ranks, label=label) for ranks, label in zip(runs, labels)]
    pairs = []
    for index, ranks in enumerate(runs[1:], start=2):
        for rank in range(min(len(runs[0]), len(ranks))):
            pairs.append(RankComparison(rank, index, compare_traces(runs[0][rank], ranks[rank], **options)))
    sizes = [len(ranks) for ranks in runs]
    result = RankedResult(cross, pairs, sizes)
    if len(set(sizes)) > 1:
        result.notes.append(world_size_note(sizes))
    return result


def world_size_note(sizes: Sequence[int]) -> str:
    """What another world size changes, said once: the ranks compared are those both runs have."""
    return (f"world size {sizes[0]} against {sizes[1]}: ranks 0-{min(sizes) - 1} are compared. With another world "
            "size DDP averages the gradients of another number of shards, summed in another order (ring "
            "all-reduce), so even the same global batch gives parameters that differ by floating-point reordering; "
            "each rank also sees another shard of the data")

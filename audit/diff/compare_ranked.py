"""Runs of N ranks compared: inside each run across its ranks, and run against run rank by rank.

The verdict is the first divergence in (step, rank) order over every comparison, so the report leads with
what went wrong first, whichever rank it was on. Two runs with another world size are compared over the
ranks both have, and the facts that tell reduction reordering from other data (audit/diff/world_size.py)
are gathered across all their ranks and worded by a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.diff.compare import compare_traces
from repro_audit.audit.diff.compare_ranks import compare_ranks
from repro_audit.audit.diff.world_size import world_size_evidence
from repro_audit.audit.divergence import Comparison, Divergence
from repro_audit.audit.explain.distributed import world_size_change
from repro_audit.audit.trace import Trace


@dataclass
class RankComparison:
    """Run B's rank against run A's same rank (`run` counts the runs of `check`, from 2)."""

    rank: int
    run: int
    comparison: Comparison


@dataclass(frozen=True)
class RankRow:
    """One line of the per-rank table: which comparison, and where its first divergence is (if any)."""

    scope: str  # "run 1 across its ranks" or "rank 1, run 2 against run 1"
    rank: int | None  # the rank of the first divergence (cross-rank: the rank that differs from rank 0)
    run: int
    first: Divergence | None
    leads: bool  # holds the first divergence in (step, rank) order of the whole result


@dataclass
class RankedResult:
    """Every comparison of ranked runs, and which one holds the first divergence."""

    cross_rank: list[Comparison]  # one per run, rank 0 against the others
    rank_by_rank: list[RankComparison]
    world_sizes: list[int]
    notes: list[str] = field(default_factory=list)  # kept for the JSON schema; the world size has its own field
    # Runs of another world size: audit/diff/world_size.py's facts, with the cause and sentence of its rule.
    world_size: dict[str, Any] | None = None

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

    def rank_rows(self) -> list[RankRow]:
        """Every comparison as a row, each run's cross-rank check first, then run against run rank by rank."""
        lead = self.first()
        rows = []
        for run, comparison in enumerate(self.cross_rank, start=1):
            first = comparison.first_divergence
            rank = int(first.evidence.get("rank", 0)) if first is not None else None
            rows.append(RankRow(f"run {run} across its ranks", rank, run, first,
                                lead is not None and comparison is lead))
        for entry in self.rank_by_rank:
            rows.append(RankRow(f"rank {entry.rank}, run {entry.run} against run 1", entry.rank, entry.run,
                                entry.comparison.first_divergence, lead is not None and entry.comparison is lead))
        return rows

    def to_dict(self) -> dict[str, Any]:
        first = self.first()
        return {"identical": self.identical, "world_sizes": self.world_sizes, "notes": list(self.notes),
                "world_size": self.world_size,
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
    changed = next((ranks for ranks in runs[1:] if len(ranks) != len(runs[0])), None)
    if changed is not None:
        evidence = world_size_evidence(runs[0], changed)
        cause, sentence = world_size_change(evidence)
        result.world_size = {**evidence, "cause": cause, "explanation": sentence}
    return result

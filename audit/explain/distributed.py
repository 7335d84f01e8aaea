"""Causes found across the ranks of one DDP run: a desync, overlapping shards, an epoch that repeats.

Each rule reads the evidence the cross-rank differ (audit/diff/compare_ranks.py) put on a divergence and
writes the cause and the sentence a report shows; nothing here compares.
"""

from __future__ import annotations

from collections.abc import Callable

from repro_audit.audit.divergence import Divergence


def rank_desync(divergence: Divergence) -> None:
    facts = divergence.evidence
    rank, item, what = facts["rank"], facts["item"], facts["what"]
    others = len(facts["drifted"]) - 1
    also = f" (and {others} more of its {facts['of']})" if others else ""
    if facts.get("gradients_agree"):
        where = ("The gradients DDP all-reduced agree on every rank at this step, so the drift came after the "
                 "all-reduce: in a hook before the optimizer step or in the optimizer step itself, on that rank only")
    else:
        where = ("The gradients already differ after backward at this step: something outside DDP's all-reduce "
                 "(no_sync, a parameter DDP does not hold, a rank-dependent loss) reached them")
    later = facts.get("later_steps") or []
    after = f"; it stays apart at {len(later)} later step{'s' if len(later) != 1 else ''}" if later else ""
    divergence.cause = "rank_desync"
    divergence.explanation = (f"Rank {rank}'s {what} {item!r}{also} differs from rank 0's after step "
                              f"{divergence.step}, though DDP keeps it bitwise equal on every rank. {where}"
                              f"{after}.")


def shard_overlap(divergence: Divergence) -> None:
    ranks = divergence.evidence["ranks"]
    divergence.cause = "shard_overlap"
    divergence.explanation = (f"Ranks {', '.join(map(str, ranks))} train on the same batch at step "
                              f"{divergence.step}: their shards overlap, as when there is no DistributedSampler "
                              "or every rank shuffles with the same seed, so more ranks add no data.")


def epoch_repeat(divergence: Divergence) -> None:
    facts = divergence.evidence
    divergence.cause = "epoch_repeat"
    divergence.explanation = (f"Rank {facts['rank']}'s batch at step {divergence.step} repeats its batch of step "
                              f"{facts['repeats_step']}: its data comes in the same order every epoch, as from a "
                              "DistributedSampler without set_epoch(epoch), or data that is not shuffled at all.")


RULES: dict[str, Callable[[Divergence], None]] = {
    "desync": rank_desync,
    "overlap": shard_overlap,
    "repeated": epoch_repeat,
}


def explain_ranks(divergences: list[Divergence]) -> None:
    """Name the cause of every cross-rank divergence, by the kind the differ gave it."""
    for divergence in divergences:
        RULES[divergence.kind](divergence)

"""Causes found across the ranks of one DDP run: a desync, overlapping shards, an epoch that repeats.

Each rule reads the evidence the cross-rank differ (audit/diff/compare_ranks.py) put on a divergence and
writes the cause and the sentence a report shows; nothing here compares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
    found = facts.get("op_before_drift")
    op = f" {op_before_drift_sentence(found, rank=rank, step=divergence.step)}" if found else ""
    divergence.explanation = (f"Rank {rank}'s {what} {item!r}{also} differs from rank 0's after step "
                              f"{divergence.step}, though DDP keeps it bitwise equal on every rank. {where}"
                              f"{after}.{op}")


def op_before_drift_sentence(found: Mapping[str, Any], *, rank: int, step: int | None) -> str:
    """The zoom-in's finding (audit/ops/drift_zoom.py) in words: the op, its phase and the user's line."""
    kind = found.get("found")
    writes = f"{_writes(found.get('writes_rank_0'))} on rank 0, {_writes(found.get(f'writes_rank_{rank}'))} on rank {rank}"
    cut = " (only the first writes were kept)" if found.get("cut") else ""
    if kind == "nothing":
        return (f"A re-run of step {step} wrote it identically on every rank ({writes}){cut}: the drift did not "
                "recur there.")
    op = f"{found.get('op')} in {_phase(found)}" + (f" at {found['at']}" if found.get("at") else "")
    if kind == "only on rank 0":
        return f"The op before the drift: {op} writes it on rank 0 but not on rank {rank} ({writes}){cut}."
    if kind == "other op":
        return f"The op before the drift: rank {rank} ran {op} where rank 0 ran {found.get('reference_op')}{cut}."
    if kind == "output differs" and found.get("same_writers"):
        return (f"Every rank writes it with the same ops at this step ({writes}); the first whose output differs is "
                f"{op}{cut}: the drift came from what that op read (such as the gradients or the optimizer "
                "state), not from an op of one rank's own.")
    if kind == "output differs":
        return f"The op before the drift: {op} left other bits on rank {rank} than on rank 0{cut}."
    return f"The op before the drift: {op}, {kind} ({writes}){cut}."


def _writes(count: Any) -> str:
    return f"{count} write{'' if count == 1 else 's'}"


def _phase(found: Mapping[str, Any]) -> str:
    phase = str(found.get("phase"))
    if phase == "optimizer step":
        return f"the optimizer step ({found['optimizer']}.step)" if found.get("optimizer") else "the optimizer step"
    return phase


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


# Relative to the tensor's largest magnitude: about 84 float32 epsilons, what summing a few shards in another
# order gives; a change of data or model moves gradients by far more.
ROUNDING_REL = 1e-5


def world_size_change(evidence: Mapping[str, Any]) -> tuple[str, str]:
    """The cause and sentence for two runs of another world size, from audit/diff/world_size.py's facts:
    `reduction_reordering` only where the data and the start are the same and step 1's all-reduced gradients
    differ by rounding, measured element by element."""
    a, b = evidence["sizes"]
    both = "rank 0 is" if min(a, b) == 1 else f"ranks 0-{min(a, b) - 1} are"
    head = f"world size {a} against {b}: {both} compared rank by rank"
    data = evidence["data"]
    if data["union"] == "unknown":
        return "world_size", (f"{head}. The ranks' examples were not fingerprinted, so whether both runs train on "
                              "the same data is not known; DDP sums another number of shards in another order")
    if data["union"] == "differs":
        return "world_size_data", (
            f"{head}. The union of the ranks' examples differs at step {data['step']} ({data['only_a']} examples "
            f"only in A, {data['only_b']} only in B; {data['examples'][0]} against {data['examples'][1]} in all): "
            "the runs train on other data (another global batch or sharding), not only in another reduction order")
    if not evidence["initialisation_same"]:
        return "world_size_start", (f"{head}. Both train on the same examples at every step, but start from "
                                    "other initial parameters")
    grads = evidence["gradients"]
    same = (f"{head}. At each of {data['steps']} steps both runs train on the same examples ({data['examples'][0]} "
            "a step, the union of the ranks' batches), from the same initial parameters")
    loss = evidence.get("loss")
    loss_words = (f"; step 1's loss of the global batch, recombined from the ranks' losses in float64, differs by "
                  f"relative {loss['max_rel']:.1e}" if loss and loss["max_rel"] else "")
    if grads["compared"] and grads["identical"]:
        return "world_size_same", f"{same}, and step 1's gradients are bitwise the same{loss_words}"
    if not grads["compared"]:
        return "world_size", f"{same}; step 1's gradients could not be compared{loss_words}"
    measured = (f"step 1's all-reduced gradients differ from the other run's by at most {grads['max_ulp']} ULP "
                f"(max relative error {grads['max_rel']:.1e})")
    if not grads["exact"]:
        return "world_size", (f"{same}; {measured.replace('at most', 'at least')}, from the summaries' extremes: "
                              f"store values (--values first) to tell rounding from a real change{loss_words}")
    if grads["max_rel"] > ROUNDING_REL:
        return "world_size_change", (f"{same}, but {measured}, more than rounding (relative {ROUNDING_REL:g}): "
                                     f"something besides the reduction order changes with the world size{loss_words}")
    return "reduction_reordering", (
        f"{same}, so the first value that differs is the all-reduced gradient: {measured}, rounding-level"
        f"{loss_words}. That is reduction reordering: DDP averages each rank's mean gradient over the ranks, "
        "the same floating-point sum in another order; later steps drift from it")


RULES: dict[str, Callable[[Divergence], None]] = {
    "desync": rank_desync,
    "overlap": shard_overlap,
    "repeated": epoch_repeat,
}


def explain_ranks(divergences: list[Divergence]) -> None:
    """Name the cause of every cross-rank divergence, by the kind the differ gave it."""
    for divergence in divergences:
        RULES[divergence.kind](divergence)

"""Cross-rank checks inside one run under DDP: what DDP keeps equal must be equal, what it shards must differ.

DDP all-reduces the gradients, so after every step each rank must hold bitwise the same parameters and
optimizer state as rank 0; the first (step, rank, parameter) that differs is a desync. Each rank must train
on its own shard, so two ranks with the same batch at a step train on overlapping data, and a rank whose batch
repeats an earlier one of its own sees the same order every epoch (a DistributedSampler without set_epoch).
Reads traces only; the explanation rules (audit/explain/distributed.py) name the causes, presenters render
the Comparison this returns like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from repro_audit.audit.divergence import Comparison, Divergence, RunInfo
from repro_audit.audit.trace import Trace

KEPT_EQUAL = (("parameters", "parameter"), ("optimizer", "optimizer state"))


def compare_ranks(ranks: Sequence[Trace], *, label: str) -> Comparison:
    """Rank 0 against every other rank of one run, in (step, rank) order."""
    from repro_audit.audit.explain.distributed import explain_ranks

    steps = _common_steps(ranks)
    divergences: list[Divergence] = []
    counts: dict[str, dict[str, int]] = {}
    for category, what in KEPT_EQUAL:
        found, compared = _desyncs(ranks, steps, category, what)
        divergences.extend(found)
        counts[category] = {"compared": compared, "diverged": len(found)}
    found, compared = _shared_batches(ranks, steps)
    repeated = _repeated_batches(ranks, steps)
    divergences.extend(found + repeated)
    counts["data"] = {"compared": compared, "diverged": len(found) + len(repeated)}
    explain_ranks(divergences)
    divergences.sort(key=lambda d: (d.step or 0, d.evidence.get("rank", 0), d.sort_key()))
    comparison = Comparison(run_a=_info(ranks[0], f"{label} rank 0"),
                            run_b=_info(ranks[-1], f"{label} ranks 1-{len(ranks) - 1}" if len(ranks) > 2
                                        else f"{label} rank 1"),
                            divergences=divergences, category_counts=counts)
    comparison.partial = not all(trace.complete for trace in ranks)
    comparison.notes.extend(random_stream_notes(ranks))
    return comparison


def _common_steps(ranks: Sequence[Trace]) -> list[int]:
    common = set.intersection(*({record["step"] for record in trace.steps} for trace in ranks))
    return sorted(common)


def _desyncs(ranks: Sequence[Trace], steps: list[int], category: str, what: str) -> tuple[list[Divergence], int]:
    """The first step at which each rank's `category` differs from rank 0's, with every item that differs."""
    found: list[Divergence] = []
    compared = 0
    for rank, trace in enumerate(ranks[1:], start=1):
        for step in steps:
            reference, own = _hashes(ranks[0].step(step), category), _hashes(trace.step(step), category)
            compared += len(reference)
            drifted = [name for name in reference if own.get(name) != reference[name]]
            if not drifted:
                continue
            later = [s for s in steps if s > step and _hashes(trace.step(s), category) != _hashes(ranks[0].step(s),
                                                                                                 category)]
            gradients_agree = _hashes(ranks[0].step(step), "gradients") == _hashes(trace.step(step), "gradients")
            found.append(Divergence(
                category=category, name=f"{drifted[0]} on rank {rank}", kind="desync", step=step,
                evidence={"rank": rank, "reference_rank": 0, "item": drifted[0], "what": what,
                          "hash_reference": reference[drifted[0]], "hash_rank": own.get(drifted[0]),
                          "drifted": drifted, "of": len(reference), "later_steps": later,
                          "gradients_agree": gradients_agree}))
            break
    return found, compared


def _hashes(record: Mapping[str, Any] | None, category: str) -> dict[str, Any]:
    """Name -> content hash of what a step record holds for `category` (optimizer state: per slot)."""
    if record is None:
        return {}
    if category == "optimizer":
        state = (record.get("optimizer") or {}).get("state") or {}
        return {f"{name}.{slot}": value for name, slots in sorted(state.items()) if isinstance(slots, Mapping)
                for slot, value in sorted(slots.items())}
    return {name: (summary or {}).get("hash") if isinstance(summary, Mapping) else summary
            for name, summary in (record.get(category) or {}).items()}


def _batch_hash(trace: Trace, step: int) -> str | None:
    record = trace.step(step) or {}
    return (record.get("batch") or {}).get("hash")


def _shared_batches(ranks: Sequence[Trace], steps: list[int]) -> tuple[list[Divergence], int]:
    """Steps at which two ranks trained on the same batch: their shards overlap."""
    found: list[Divergence] = []
    for step in steps:
        owners: dict[str, list[int]] = {}
        for rank, trace in enumerate(ranks):
            batch = _batch_hash(trace, step)
            if batch is not None:
                owners.setdefault(batch, []).append(rank)
        for batch, same in sorted(owners.items(), key=lambda item: item[1]):
            if len(same) > 1:
                found.append(Divergence(category="data", name=f"batch on ranks {_ranks(same)}", kind="overlap",
                                        step=step, evidence={"rank": same[1], "ranks": same, "batch_hash": batch}))
    return found, len(steps) * len(ranks)


def _repeated_batches(ranks: Sequence[Trace], steps: list[int]) -> list[Divergence]:
    """A rank's batch that repeats one of its own earlier batches: the first repeat per rank."""
    found: list[Divergence] = []
    for rank, trace in enumerate(ranks):
        seen: dict[str, int] = {}
        for step in steps:
            batch = _batch_hash(trace, step)
            if batch is None:
                continue
            if batch in seen:
                found.append(Divergence(category="data", name=f"batch on rank {rank}", kind="repeated", step=step,
                                        evidence={"rank": rank, "repeats_step": seen[batch], "batch_hash": batch}))
                break
            seen[batch] = step
    return found


def random_stream_notes(ranks: Sequence[Trace]) -> list[str]:
    """Each rank's first random draw of training: the same state on every rank is the same seed everywhere
    (what DDP's dropout usually wants; a per-rank data shuffle does not)."""
    firsts: dict[str, list[int]] = {}
    for rank, trace in enumerate(ranks):
        draws = next((record.get("random_draws") for record in trace.steps if record.get("random_draws")), None)
        if draws:
            firsts.setdefault(str(draws[0].get("rng_fingerprint")), []).append(rank)
    if not firsts:
        return ["random streams: no rank drew random numbers during training"]
    groups = "; ".join(f"ranks {_ranks(same)} start from state {fingerprint[:21]}" for fingerprint, same in
                       sorted(firsts.items(), key=lambda item: item[1]))
    if len(firsts) == 1 and len(ranks) > 1:
        return [f"random streams: every rank draws the same random stream (the same seed on every rank): {groups}"]
    return [f"random streams per rank: {groups}"]


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(str(rank) for rank in ranks)


def _info(trace: Trace, label: str) -> RunInfo:
    return RunInfo(label=label, trace_path=str(trace.path), framework=trace.framework, complete=trace.complete,
                   steps_recorded=len(trace.steps))

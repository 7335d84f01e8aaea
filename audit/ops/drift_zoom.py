"""The op before a drift between ranks: the zoom-in of a desync that the cross-rank check found.

The run's config is re-run under torchrun, all ranks as recorded, up to the earliest step a rank drifted at;
during that whole step every rank lists the ops that write the drifting tensors (probes/torch/drift_run.py).
Here rank N's list is aligned with rank 0's by op name: the first write that exists on one rank only, is
another op, or leaves other bits behind is the op before the drift. It goes on the desync's evidence under
`op_before_drift`, and the explanation rule (audit/explain/distributed.py) words it. A re-run that fails
says so in one note; the recorded traces are never touched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.divergence import Comparison, Divergence
from repro_audit.audit.errors import RunFailed, UserError
from repro_audit.audit.runner import ProgressCallback

WRITERS_FILE = "writers.json"  # written by probes/torch/drift_run.py in each rank folder
NOTE = "the op before the drift was not found"


def zoom_into_drifts(comparisons: Sequence[Comparison], configs: Sequence[RunConfig], *, folder: Path,
                     kept: bool, progress: ProgressCallback | None = None) -> int:
    """Each run's cross-rank comparison with a desync gets the op before its earliest drift; runs of the same
    config share one re-run. Returns how many re-runs there were."""
    done: dict[str, list[dict[str, Any]] | str] = {}
    for index, (comparison, config) in enumerate(zip(comparisons, configs), start=1):
        target = drift_target(comparison)
        if target is None or config.framework != "torch":
            continue
        step, desyncs = target
        if config.launch.get("wrap") == "fsdp":  # each rank holds a shard: no whole tensor to watch the writes to
            comparison.notes.append(f"{NOTE}: FSDP runs are not re-run (each rank holds a shard of the parameter)")
            continue
        items = sorted({(d.category, str(d.evidence["item"])) for d in desyncs})
        key = json.dumps([{**config.to_dict(), "label": None}, step, items], sort_keys=True, default=str)
        if key not in done:
            done[key] = _rerun(config, step, items, folder / f"drift-{len(done) + 1}", kept=kept, progress=progress)
        lists = done[key]
        if isinstance(lists, str):
            comparison.notes.append(lists)
        else:
            annotate(desyncs, lists)
    return len(done)


def drift_target(comparison: Comparison) -> tuple[int, list[Divergence]] | None:
    """The earliest step any rank drifted at, and every desync found at that step (all ranks, all items)."""
    desyncs = [d for d in comparison.divergences if d.kind == "desync" and d.step is not None]
    if not desyncs:
        return None
    step = min(int(d.step) for d in desyncs if d.step is not None)
    return step, [d for d in desyncs if d.step == step]


def annotate(desyncs: Sequence[Divergence], lists: Sequence[dict[str, Any]]) -> None:
    """Put the op before the drift on each desync and word its explanation again."""
    from repro_audit.audit.explain.distributed import explain_ranks

    for divergence in desyncs:
        rank = int(divergence.evidence["rank"])
        key = f"{divergence.category}:{divergence.evidence['item']}"
        if rank >= len(lists):
            continue
        reference, own = (lists[r]["writes"].get(key) or [] for r in (0, rank))
        found = op_before_drift(reference, own, rank=rank, optimizer=lists[rank].get("optimizer"))
        if any(key in (lists[r].get("cut") or []) for r in (0, rank)):
            found["cut"] = True
        stack = found.pop("stack", None)
        divergence.evidence["op_before_drift"] = found
        if stack:  # the user's frames, innermost first: apart, so the finding itself stays one short line
            divergence.evidence["op_before_drift_stack"] = stack
    explain_ranks(list(desyncs))


def op_before_drift(reference: list[dict[str, Any]], own: list[dict[str, Any]], *, rank: int,
                    optimizer: str | None = None) -> dict[str, Any]:
    """Rank `rank`'s writes against rank 0's, aligned by op name, in execution order: the first that exists on
    one side only, is another op, or leaves other bits (`found` says which; "nothing" when none does)."""
    names = ([write.get("op") for write in reference], [write.get("op") for write in own])
    same_writers = names[0] == names[1]
    counts = {"writes_rank_0": len(reference), f"writes_rank_{rank}": len(own)}
    matcher = SequenceMatcher(a=names[0], b=names[1], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for ours, theirs in zip(own[j1:j2], reference[i1:i2]):
                if ours.get("hash") != theirs.get("hash"):
                    return {**_shown(ours, optimizer), "found": "output differs", "same_writers": same_writers,
                            **counts}
        elif tag == "insert":
            return {**_shown(own[j1], optimizer), "found": f"only on rank {rank}", **counts}
        elif tag == "delete":
            return {**_shown(reference[i1], optimizer), "found": "only on rank 0", **counts}
        else:
            return {**_shown(own[j1], optimizer), "found": "other op", "reference_op": reference[i1].get("op"),
                    **counts}
    return {"found": "nothing", "same_writers": True, **counts}


def _shown(write: dict[str, Any], optimizer: str | None) -> dict[str, Any]:
    stack = write.get("stack") or []
    top = stack[0] if stack else None
    shown = {"op": write.get("op"), "phase": write.get("phase"), "index": write.get("index"),
             "at": f"{os.path.basename(str(top['file']))}:{top['line']}" if top else None,
             "function": top.get("function") if top else None, "stack": stack}
    if write.get("phase") == "optimizer step" and optimizer:
        shown["optimizer"] = optimizer
    return shown


def _rerun(config: RunConfig, step: int, items: list[tuple[str, str]], run: Path, *, kept: bool,
           progress: ProgressCallback | None) -> list[dict[str, Any]] | str:
    """Each rank's writers.json of a re-run to `step`, or the note that says why there are none."""
    from repro_audit.audit.runner import record

    spec = {"step": step, "items": [{"category": category, "item": item} for category, item in items]}
    try:
        result = record(replace(config, steps=step, label=f"{config.label} (zoom)"), run, progress=progress,
                        mode="drift", zoom=spec)
        if not result.ok:
            return f"{NOTE}: its re-run of step {step} ended early: " + (
                result if kept else replace(result, trace_path=None)).failure_line()
        return [_read(run, rank) for rank in range(config.nproc)]
    except (UserError, OSError) as exc:
        return f"{NOTE}: {exc}"


def _read(run: Path, rank: int) -> dict[str, Any]:
    path = run / f"rank_{rank:02d}" / WRITERS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFailed(f"rank {rank} wrote no readable {WRITERS_FILE}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("writes"), dict):
        raise RunFailed(f"rank {rank}'s {WRITERS_FILE} holds no writes")
    return data

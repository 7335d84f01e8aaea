"""The reports of runs with N ranks: the first divergence in (step, rank) order, then a line per comparison.

Walks the RankedResult the differ built (audit/diff/compare_ranked.py); decides nothing.
"""

from __future__ import annotations

import json

from repro_audit.audit.diff.compare_ranked import RankedResult
from repro_audit.audit.divergence import Comparison
from repro_audit.reports.json_report import SCHEMA_VERSION, to_json_value
from repro_audit.reports.text import render_text

RANKED_SCHEMA = "repro-audit-ranked-comparison"


def render_ranked_text(result: RankedResult, *, name: str) -> str:
    first = result.first()
    ranks = "/".join(str(size) for size in dict.fromkeys(result.world_sizes))
    if first is None:
        runs = len(result.world_sizes)
        steps = result.cross_rank[0].run_a.steps_recorded
        lines = [(f"IDENTICAL: {runs} runs of {name!r} on {ranks} ranks match bitwise rank by rank, and within each "
                 f"run every rank holds the same parameters and optimizer state ({steps} steps each)")]
    else:
        lines = [f"first divergence in (step, rank) order, {name!r} on {ranks} ranks:", "", render_text(first), ""]
    if result.world_size is not None:
        lines += ["World size:", f"  {result.world_size['explanation']} ({result.world_size['cause']})", ""]
    lines += ["Ranks:"] + [f"  {_cross_line(index, c)}" for index, c in enumerate(result.cross_rank, start=1)]
    lines += [f"  rank {entry.rank}, run {entry.run} against run 1: {_pair_line(entry.comparison)}"
              for entry in result.rank_by_rank]
    notes = list(result.notes) + list(result.cross_rank[0].notes if result.cross_rank else [])
    if notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in notes]
    return "\n".join(lines)


def render_ranked_json(result: RankedResult) -> str:
    data = result.to_dict()
    data.update(schema=RANKED_SCHEMA, schema_version=SCHEMA_VERSION)
    return json.dumps(to_json_value(data), sort_keys=True, indent=2, allow_nan=False) + "\n"


def _cross_line(run: int, comparison: Comparison) -> str:
    first = comparison.first_divergence
    if first is None:
        return f"run {run} across its ranks: every rank agrees where DDP keeps them equal; no shared batches"
    count = sum(1 for _ in comparison.walk())
    return (f"run {run} across its ranks: {count} finding{'s' if count != 1 else ''}, first at step {first.step}: "
            f"{first.name} ({first.cause})")


def _pair_line(comparison: Comparison) -> str:
    first = comparison.first_divergence
    if first is None:
        return "identical"
    where = "before training" if first.step is None else f"at step {first.step}"
    return f"first divergence {where} in {first.category}: {first.name}" + (f" ({first.cause})" if first.cause else "")

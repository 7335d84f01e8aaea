"""The per-rank table of a report on runs of N ranks: one row per comparison the differ made.

Walks RankedResult.rank_rows() (audit/diff/compare_ranked.py); decides nothing.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.compare_ranked import RankedResult


def ranks_view(result: RankedResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    rows = [{"scope": row.scope, "rank": row.rank, "run": row.run, "leads": row.leads,
             "first": None if row.first is None else {
                 "name": row.first.name, "step": row.first.step, "category": row.first.category,
                 "cause": row.first.cause, "kind": row.first.kind}}
            for row in result.rank_rows()]
    change = result.world_size
    return {"rows": rows, "world_sizes": result.world_sizes, "notes": list(result.notes),
            "world_size": None if change is None else {"cause": change["cause"], "explanation": change["explanation"]}}

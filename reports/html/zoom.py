"""The zoom-in's card for the page: OpZoom.to_dict() laid out as the first diverging op, its module, the
source line and the rest of the stack folded.

The sentences are audit/ops/zoom.py's; nothing here compares or decides."""

from __future__ import annotations

from typing import Any

from repro_audit.audit.divergence import Comparison

MAX_FRAMES = 6  # as the text report shows


def zoom_view(comparison: Comparison) -> dict[str, Any] | None:
    """The card's content; None without a zoom-in."""
    if comparison.zoom is None:
        return None
    document = comparison.zoom.to_dict()
    op = document.get("first_op")
    frames = [f"{frame['file']}:{frame['line']} in {frame['function']}"
              for frame in ((op or {}).get("stack") or [])[:MAX_FRAMES]]
    return {
        "summary": document["summary"],
        "step": document["step"],
        "region": document["module"] or "the whole step",
        "ops_compared": document["ops_compared"],
        "op": op,
        "source": frames[0] if frames else None,
        "callers": frames[1:],
        "notes": document["notes"],
    }

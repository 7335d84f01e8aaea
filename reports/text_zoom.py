"""The terminal lines of the zoom-in: the first diverging op and the user's stack where it ran.

Every sentence comes from audit/ops/zoom.py; this only lays them out."""

from __future__ import annotations

import os
import textwrap
from typing import Any

MAX_FRAMES = 6


def zoom_lines(zoom: Any, *, width: int = 100) -> list[str]:
    """The section; empty without a zoom-in."""
    if zoom is None:
        return []
    document = zoom.to_dict()
    lines = ["", "Zoom-in (both sides re-run to the diverging step, its ops hashed):"]
    lines += textwrap.wrap(f"  {document['summary']}", width=width, subsequent_indent="    ",
                           break_on_hyphens=False)
    op = document.get("first_op") or {}
    for frame in (op.get("stack") or [])[:MAX_FRAMES]:
        path = os.path.relpath(frame["file"]) if os.path.isabs(frame["file"]) else frame["file"]
        lines.append(f"    at {path}:{frame['line']} in {frame['function']}")
    lines += [f"  - {note}" for note in document["notes"]]
    return lines

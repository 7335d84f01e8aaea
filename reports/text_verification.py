"""The terminal lines of `--verify`'s table: intervention -> effect, what remains, what was not tested.

Every sentence comes from audit/verify/result.py; this only lays them out."""

from __future__ import annotations

import textwrap
from typing import Any

KIND_MARKS = {"none": " ", "single": "1", "all": "*", "all_but": "-", "graph": "="}


def verification_lines(verification: Any, *, width: int = 100) -> list[str]:
    """The section, wrapped to `width`; empty without a verification."""
    if verification is None:
        return []
    document = verification.to_dict()
    lines = ["", "Verified by intervention (run B re-run with each mechanism neutralised; shared numbers vs run A):"]
    for row in document["rows"]:
        lines += textwrap.wrap(f"  [{KIND_MARKS.get(row['kind'], '?')}] {row['intervention']} -> {row['summary']}",
                               width=width, subsequent_indent="        ", break_on_hyphens=False)
    remains = document["remains"]
    together = "every intervention together" if any(r["kind"] == "all" for r in document["rows"]) else "the intervention"
    text = (f"  What remains after {together}: {remains}" if remains else
            f"  What remains after {together}: nothing; every shared number matches run A.")
    if len(document["rows"]) > 1:
        lines += textwrap.wrap(text, width=width, subsequent_indent="    ", break_on_hyphens=False)
    for item in document["untested"]:
        lines += textwrap.wrap(f"  Not tested: {item['title']}: {item['reason']}", width=width,
                               subsequent_indent="    ", break_on_hyphens=False)
    return lines

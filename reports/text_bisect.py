"""The text report of `bisect`: the minimal changes with the divergence they reproduce, then every test."""

from __future__ import annotations

from repro_audit.audit.bisect import BisectResult

MAX_TESTS = 30


def render_bisect_text(result: BisectResult) -> str:
    lines = [("FOUND: " if result.found else "NOTHING TO BISECT: ") + result.sentence()]
    if result.target is not None:
        lines.append(f"  B's first divergence from A: {result.target.describe()}")
        if result.target.explanation:
            lines.append(f"    {result.target.explanation}")
    if result.minimal:
        lines += ["", "Minimal changes (applied to A, they reproduce it):"]
        lines += [f"  {change.describe()}" for change in result.minimal]
    others = [change for change in result.changes if change not in result.minimal]
    if others:
        lines += ["", "Other changes (not needed to reproduce it):"]
        lines += [f"  {change.describe()}" for change in others]
    tested = result.to_dict()["tested"]
    if tested:
        lines += ["", f"Tests ({result.runs} runs in all, A and B included):"]
        for item in tested[:MAX_TESTS]:
            found = item["first_divergence"]
            where = f"failed: {item['failed']}" if item.get("failed") else "identical to A" if found is None else \
                f"{found['category']} {found['name']} " + \
                ("before training" if found["step"] is None else f"at step {found['step']}")
            names = ", ".join(item["changes"]) or "(none: A rerun)"
            lines.append(f"  {'reproduces' if item['reproduces'] else 'no        '}  {names}: {where}")
        if len(tested) > MAX_TESTS:
            lines.append(f"  ... {len(tested) - MAX_TESTS} more in --json")
    if result.notes and result.found:
        lines += ["", "Notes:", *(f"  {note}" for note in result.notes)]
    return "\n".join(lines)

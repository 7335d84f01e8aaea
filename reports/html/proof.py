"""`--verify`'s table for the page: Verification.to_dict() as it is, each row tied to the numbers of the
mechanisms it neutralises, so "all but: ..." reads against the list above it.

The sentences are audit/verify/result.py's; nothing here measures or judges."""

from __future__ import annotations

from typing import Any

from repro_audit.audit.divergence import Comparison

STATES = {True: "same", False: "differs"}


def proof_view(comparison: Comparison) -> dict[str, Any] | None:
    """The table's rows with their mechanism numbers and state; None without `--verify`."""
    if comparison.verification is None:
        return None
    document = comparison.verification.to_dict()
    numbers = {mechanism.cause: index for index, mechanism in enumerate(comparison.mechanisms, 1)}
    rows = []
    for row in document["rows"]:
        effect = row["effect"]
        rows.append({**row, "numbers": sorted(numbers[cause] for cause in row["causes"] if cause in numbers),
                     "state": STATES[bool(effect and effect["equal_on_shared"])]})
    together = any(row["kind"] == "all" for row in rows)
    return {**document, "rows": rows, "after": "every intervention together" if together else "the intervention"}

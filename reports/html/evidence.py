"""Evidence as rows of a small table a person reads: `key | A | B` where the value is a pair of the two runs,
`key | value` otherwise, with lists and mappings written as words instead of JSON.

A divergence's evidence is an open mapping (docs/json-schema.md); the report used to dump it as JSON, braces,
quotes and all. This only lays values out; it decides nothing about them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_VALUE_CHARS = 400  # characters of one value
MAX_ITEMS = 12  # items of one list or mapping written before the rest is counted
# Keys that say most about a difference come first; the others follow in name order.
ORDER = ("op_before_drift", "mismatched", "numel", "max_abs_error", "max_rel_error", "median_abs_error", "max_ulp", "passes_at_atol",
         "compared_by", "seed_offset", "creation_index", "shift", "loss_term", "loss_weight", "node", "forward_op",
         "module", "parameters", "ops_added", "ops_removed")
HIDDEN = frozenset({"a", "b", "opcodes", "ops_a", "ops_b"})  # shown elsewhere (A/B columns, the op table)


def readable(value: Any, *, limit: int = MAX_VALUE_CHARS) -> str:
    """A value as one line of words; floats exactly (this is a determinism tool), long values cut and said so."""
    text = _words(value, depth=0)
    if len(text) > limit:
        return f"{text[:limit]}… ({len(text) - limit} more characters cut)"
    return text


def is_pair(value: Any) -> bool:
    """A value of both runs, {"a": ..., "b": ...}, as comparators write it."""
    return isinstance(value, Mapping) and set(value) == {"a", "b"}


def evidence_rows(evidence: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Rows `{key, a, b}` for pairs and `{key, value}` for the rest, the telling keys first."""
    if not evidence:
        return []
    keys = [key for key in ORDER if key in evidence] + sorted((str(key) for key in evidence if key not in ORDER),
                                                              key=str)
    rows = []
    for key in keys:
        if key in HIDDEN:
            continue
        value = evidence[key]
        if is_pair(value):
            rows.append({"key": key, "a": readable(value["a"]), "b": readable(value["b"])})
        else:
            rows.append({"key": key, "value": readable(value)})
    return rows


def _words(value: Any, *, depth: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf"))
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, Mapping):
        items = list(value.items())
        text = "; ".join(f"{key}: {_words(item, depth=depth + 1)}" for key, item in items[:MAX_ITEMS])
        text += f"; … {len(items) - MAX_ITEMS} more" if len(items) > MAX_ITEMS else ""
        return f"({text})" if depth else text
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
        text = ", ".join(_words(item, depth=depth + 1) for item in items[:MAX_ITEMS])
        text += f", … {len(items) - MAX_ITEMS} more" if len(items) > MAX_ITEMS else ""
        return f"[{text}]" if depth or not items else text
    return str(value)

"""Step lines of `steps.jsonl`, encoded fast: a step record is written at every step of a run.

orjson encodes a record of a few hundred tensor summaries some fifteen times faster than `json` (5 ms a
step on the fixture Transformer). It writes NaN and Infinity as null, though, which a trace keeps apart
from "not measured", and most runs hold some at every step (the -inf of masked attention scores). So
while orjson encodes, each non-finite number stands in the record as a marker string, and the markers
become NaN, Infinity and -Infinity in the text, as `json` writes them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from repro_audit.audit.trace.format import json_default


def dumps_step(record: Any) -> str:
    """A step record, its keys in the order the probe built them (a fixed order, set by the probe's code).

    Where markers cannot stand in safely (a marker among the record's own strings, a non-finite number in
    a tuple or set, an int past 64 bits), `json` encodes the record.
    """
    places: list[tuple[Any, Any, Any]] = []
    if _find_nonfinite(record, places):
        text = _encode_fast(record, places)
        if text is not None:
            return text
    # A record is a tree the probe has just built, never a cycle: the cycle check (15%) is off.
    return json.dumps(record, separators=(",", ":"), default=json_default, check_circular=False)


# Strings standing for one non-finite number each while orjson encodes, and how orjson writes them (it
# escapes the NUL); all ASCII, so the text is counted and replaced as bytes.
_MARKERS = {spelling: f"\x00repro-audit:{spelling}" for spelling in ("NaN", "Infinity", "-Infinity")}
_WRITTEN = {spelling: f'"\\u0000repro-audit:{spelling}"'.encode() for spelling in _MARKERS}


def _spelling(number: Any) -> str:
    value = float(number)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _encode_fast(record: Any, places: list[tuple[Any, Any, Any]]) -> str | None:
    """orjson's text of the record with its non-finite numbers (at `places`) as `json` spells them."""
    spellings = [_spelling(value) for _, _, value in places]
    marked = 0
    try:
        for (container, key, _), spelling in zip(places, spellings):
            container[key] = _MARKERS[spelling]  # a tuple refuses: TypeError
            marked += 1
        text = orjson.dumps(record, default=json_default)
    except (TypeError, orjson.JSONEncodeError):
        return None
    finally:
        for container, key, value in places[:marked]:
            container[key] = value
    for spelling, written in _WRITTEN.items():
        expected = spellings.count(spelling)
        if text.count(written) != expected:
            return None  # the record's own strings hold a marker
        if expected:
            text = text.replace(written, spelling.encode())
    return text.decode()


def _find_nonfinite(value: Any, places: list[tuple[Any, Any, Any]]) -> bool:
    """Collect (container, key, number) for every non-finite number in the record; False where one
    cannot be replaced (it sits in a set). One in a tuple is found here and refused by the tuple when it
    is replaced. About 0.7 ms over a step record: `x - x != 0` is true exactly for NaN and ±Inf, and
    the keys are looked up only in a container that holds such a number."""
    kind = type(value)
    if kind is dict:
        items: Any = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return not isinstance(value, float) or math.isfinite(value)
    found = False
    for item in items:
        kind = type(item)
        if kind is float:
            if item - item != 0.0:
                found = True
        elif kind is dict or kind is list or kind is tuple:
            if not _find_nonfinite(item, places):
                return False
        elif kind is not str and kind is not int and kind is not bool and item is not None:
            finite = _is_finite(item)
            if finite is None:
                return False
            found = found or not finite
    if found:
        for key, item in (value.items() if type(value) is dict else enumerate(value)):
            if type(item) not in (dict, list, tuple, str, int, bool) and item is not None and not _is_finite(item):
                places.append((value, key, item))
    return True


def _is_finite(value: Any) -> bool | None:
    """For a value `json` hands to `json_default` (numpy scalars, sets) or a float subclass: whether it is a
    finite number or holds none that is not; None for a set holding one (it cannot be replaced)."""
    if isinstance(value, float):
        return math.isfinite(value)
    plain = json_default(value)
    if isinstance(plain, float):
        return math.isfinite(plain)
    if isinstance(plain, list):
        return None if any(isinstance(x, float) and not math.isfinite(x) for x in plain) else True
    return True

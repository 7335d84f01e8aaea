"""The comparison as strict JSON, and back: for machines, CI artefacts and the pytest plugin.

Strict JSON has no NaN or Infinity, and a determinism tool meets them all the time, so non-finite floats
are written as the strings "NaN", "Infinity" and "-Infinity" and read back as floats (in evidence and
tolerance, where numbers live). Keys are sorted and nothing depends on time: the same comparison gives the
same bytes. docs/json-schema.md describes every field.

A document read back is checked first (nesting depth, then the type of every field the text report uses):
whatever it holds, reading it gives a Comparison that the text and JSON reports render, or one TraceError.
"""

from __future__ import annotations

import json
import math
from typing import Any

from repro_audit.audit.divergence import Comparison, Divergence, RunInfo
from repro_audit.audit.errors import TraceError
from repro_audit.audit.trace.schema import (
    AnyJSON,
    Bool,
    Fields,
    Int,
    Invalid,
    ListOf,
    MapOf,
    Str,
    nested_within,
)

SCHEMA = "repro-audit-comparison"
SCHEMA_VERSION = 1
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
REQUIRED_KEYS = ("run_a", "run_b", "divergences")
# Nesting of a whole document: a real comparison is some 20 deep; the readers and reports recurse into it.
MAX_DEPTH = 100

# What the reports read. A missing key of a divergence or run is left to the reader (a KeyError); a key the
# text report indexes without a default (a health finding's rule, layer and step) is required here.
_ANY, _STR, _STR_OR_NULL = AnyJSON(), Str(), Str(nullable=True)
DIVERGENCE = Fields({"category": _STR, "name": _STR, "kind": _STR, "step": Int(nullable=True),
                     "explanation": _STR, "cause": _STR_OR_NULL, "evidence": MapOf(_ANY, nullable=True),
                     "counted": Bool()})
DIVERGENCE.fields += (("children", ListOf(DIVERGENCE, nullable=True)),)  # a divergence holds divergences
RUN = Fields({"steps_recorded": Int(minimum=0), "error": _STR_OR_NULL})
HEALTH_REPORT = Fields({
    "findings": ListOf(Fields({"rule": _STR}, required=("rule", "layer", "step")), nullable=True),
    "not_checked": ListOf(_ANY, nullable=True), "thresholds": _ANY}, nullable=True)
COMPARISON = Fields({
    "run_a": RUN, "run_b": RUN, "divergences": ListOf(DIVERGENCE), "tolerance": MapOf(_ANY, nullable=True),
    "notes": ListOf(_ANY, nullable=True), "category_counts": MapOf(MapOf(_ANY), nullable=True),
    "health": MapOf(HEALTH_REPORT, nullable=True), "distances": MapOf(_ANY, nullable=True),
    "ignored": ListOf(_STR, nullable=True)})


def render_json(comparison: Comparison) -> str:
    """The comparison's dict with its schema name and version: sorted keys, indent 2, strict JSON."""
    data = comparison.to_dict()
    data.update(schema=SCHEMA, schema_version=SCHEMA_VERSION)
    return json.dumps(to_json_value(data), sort_keys=True, indent=2, allow_nan=False) + "\n"


def render_document(document: dict[str, Any]) -> str:
    """Another result (`noise`, `bisect`) as strict JSON the same way: sorted keys, indent 2, non-finite floats
    as strings."""
    return json.dumps(to_json_value(document), sort_keys=True, indent=2, allow_nan=False) + "\n"


def to_json_value(value: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays as Python, non-finite floats as strings, keys as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy
        return to_json_value(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json_value(item) for item in value), key=repr)  # a set has no order of its own
    return str(value)  # paths, enums: what they print as


def comparison_from_json(text: str) -> Comparison:
    """Read what `render_json` wrote; another schema, a newer version or a malformed document is a TraceError."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as error:
        raise TraceError(f"not a repro-audit comparison: invalid JSON ({error})") from None
    except RecursionError:
        raise TraceError("not a repro-audit comparison: invalid JSON (nested too deep)") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise TraceError(f"not a repro-audit comparison: schema is {found!r}, expected {SCHEMA!r}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TraceError(f"repro-audit comparison schema version {version!r} is not one this version reads "
                         f"({SCHEMA_VERSION}); read it with the repro-audit that wrote it")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise TraceError(f"repro-audit comparison is missing {', '.join(missing)}")
    if not nested_within(data, MAX_DEPTH):
        raise TraceError(f"repro-audit comparison is malformed: nested more than {MAX_DEPTH} deep")
    try:
        COMPARISON.check(data)
    except Invalid as invalid:
        raise TraceError(f"repro-audit comparison is malformed: {invalid.describe()}") from None
    try:
        return Comparison(
            run_a=_run_info(data["run_a"]),
            run_b=_run_info(data["run_b"]),
            divergences=[_divergence(item) for item in data["divergences"]],
            tolerance={str(key): _from_json_value(item) for key, item in (data.get("tolerance") or {}).items()},
            partial=bool(data.get("partial", False)),
            notes=[str(note) for note in data.get("notes") or []],
            category_counts={str(category): dict(counts)
                             for category, counts in (data.get("category_counts") or {}).items()},
            health=_health(data.get("health")),
            distances=data.get("distances"),  # plain numbers, lists and names: nothing to convert
            ignored=[str(category) for category in data.get("ignored") or []],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise TraceError(f"repro-audit comparison is malformed: {type(error).__name__}: {error}") from None


def _run_info(data: dict[str, Any]) -> RunInfo:
    path = data["trace_path"]
    return RunInfo(label=str(data["label"]), trace_path=None if path is None else str(path),
                   framework=str(data["framework"]),
                   complete=bool(data["complete"]), steps_recorded=int(data["steps_recorded"]),
                   error=data.get("error"))


def _health(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Both runs' health reports; only their numbers are read back as floats (a layer may be named "NaN")."""
    if data is None:
        return None
    return {str(side): _health_report(report) for side, report in data.items()}


def _health_report(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    findings = []
    for finding in report.get("findings") or []:
        numbers = {key: _from_json_value(finding[key]) for key in ("value", "threshold", "worst", "evidence")
                   if key in finding}
        findings.append({**finding, **numbers})
    return {**report, "findings": findings, "thresholds": _from_json_value(report.get("thresholds") or {})}


def _divergence(data: dict[str, Any]) -> Divergence:
    # `order` is not written: the tree is already in causal order, and it only sorted that.
    divergence = Divergence.from_dict(data)
    for node in divergence.walk():
        node.evidence = _from_json_value(node.evidence)
    return divergence


def _from_json_value(value: Any) -> Any:
    """The inverse of to_json_value for numbers: "NaN", "Infinity" and "-Infinity" are floats again."""
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {key: _from_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json_value(item) for item in value]
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; this format writes it as the string {name!r}")

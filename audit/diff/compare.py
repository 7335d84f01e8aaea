"""Compare two traces: run every comparator, explain, arrange causally.

Framework-agnostic: this reads traces only, never torch or TensorFlow. A run that stopped early is
compared over the steps both recorded and the result says it is partial, instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from repro_audit.audit.diff.causal_tree import build_tree
from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.distance import step_distances
from repro_audit.audit.diff.registry import KeptDivergences, comparators
from repro_audit.audit.diff.values import Tolerance
from repro_audit.audit.divergence import CATEGORIES, Comparison, Divergence, RunInfo
from repro_audit.audit.errors import UserError
from repro_audit.audit.health import Thresholds, check_trace
from repro_audit.audit.trace import Trace
from repro_audit.audit.trace.format import hashes_tensors_in_chunks


def compare_traces(trace_a: Trace, trace_b: Trace, *, rtol: float = 0.0, atol: float = 0.0,
                   ignore: Iterable[str] = (), health_thresholds: Thresholds | None = None) -> Comparison:
    """The divergence tree of run B against run A, bitwise unless a tolerance is given; both runs' health
    by `health_thresholds` (the defaults of `repro-audit health` when None)."""
    if rtol < 0 or atol < 0 or math.isnan(rtol) or math.isnan(atol):
        raise UserError(f"tolerances must be >= 0 (rtol={rtol}, atol={atol})")
    _same_tensor_hashes(trace_a, trace_b)
    ignored = set(ignore)
    unknown = ignored - set(CATEGORIES)
    if unknown:
        raise UserError(f"unknown category to ignore: {min(unknown)} (known: {', '.join(CATEGORIES)})")
    context = CompareContext(trace_a, trace_b, Tolerance(rtol=rtol, atol=atol))
    registered = comparators()
    divergences: list[Divergence] = []
    omitted: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for category in CATEGORIES:
        if category in ignored or category not in registered:
            continue
        result = registered[category](context)
        divergences.extend(result.divergences)
        counts[category] = {"compared": result.compared, "diverged": result.diverged}
        if result.divergences.omitted:
            counts[category]["omitted"] = result.divergences.omitted
            omitted.append(_omitted_note(category, result.divergences))
    # Imported here: the explanation rules read the differ's context and constants, so a module-level
    # import would make `import repro_audit.audit.explain...` on its own circular.
    from repro_audit.audit.explain import explain

    distances = step_distances(context, divergences, ignored=ignored)  # before the tree moves divergences
    findings = explain(divergences, context)
    comparison = Comparison(
        run_a=_run_info(trace_a), run_b=_run_info(trace_b), divergences=build_tree(divergences, findings),
        tolerance=context.tolerance.to_dict(), category_counts=counts, distances=distances,
        ignored=[category for category in CATEGORIES if category in ignored])
    comparison.partial = not (trace_a.complete and trace_b.complete)
    comparison.health = None if "health" in ignored else run_health(trace_a, trace_b, thresholds=health_thresholds)
    comparison.notes.extend(_notes(context, ignored))
    comparison.notes.extend(omitted)
    return comparison


def _omitted_note(category: str, kept: KeptDivergences) -> str:
    steps = kept.omitted_steps
    where = f" at steps {_span(steps)}" if steps else ""
    return (f"{category}: {len(kept) + kept.omitted} divergences; the first {len(kept)} are in the report, "
            f"{kept.omitted} more{where} are counted, not spelled out")


def _same_tensor_hashes(trace_a: Trace, trace_b: Trace) -> None:
    """Traces from before schema 3 hash large tensors another way: every one of them would differ."""
    chunked = [hashes_tensors_in_chunks(trace.schema_version) for trace in (trace_a, trace_b)]
    if chunked[0] != chunked[1]:
        old, new = (trace_a, trace_b) if chunked[1] else (trace_b, trace_a)
        raise UserError(f"trace {old.path} (schema version {old.schema_version}) hashes tensors of more than "
                        f"64 KiB otherwise than {new.path} (schema version {new.schema_version}): "
                        f"re-record {old.path} with this version")


def compare_check(traces: Sequence[Trace], *, rtol: float = 0.0, atol: float = 0.0,
                  ignore: Iterable[str] = (), health_thresholds: Thresholds | None = None) -> list[Comparison]:
    """Run 1 against each other run of the same config: what `repro-audit check` reports."""
    if len(traces) < 2:
        raise UserError("check needs at least two runs")
    return [compare_traces(traces[0], other, rtol=rtol, atol=atol, ignore=ignore, health_thresholds=health_thresholds)
            for other in traces[1:]]


def run_health(trace_a: Trace, trace_b: Trace, *, thresholds: Thresholds | None = None) -> dict[str, Any] | None:
    """Both runs' health by the rules of `repro-audit health`, None where not recorded."""
    reports = {side: _health_of(trace, thresholds) for side, trace in (("a", trace_a), ("b", trace_b))}
    return reports if any(report is not None for report in reports.values()) else None


def _health_of(trace: Trace, thresholds: Thresholds | None) -> dict[str, Any] | None:
    if not any(isinstance(record.get("health"), dict) for record in trace.steps):
        return None
    return check_trace(trace, thresholds=thresholds or Thresholds()).as_dict()


def _run_info(trace: Trace) -> RunInfo:
    error = trace.error or {}
    message = f"{error.get('kind')} at step {error.get('step')}: {error.get('message')}" if error else None
    return RunInfo(label=trace.label, trace_path=str(trace.path), framework=trace.framework,
                   complete=trace.complete, steps_recorded=len(trace.steps), error=message)


def _notes(context: CompareContext, ignored: set[str]) -> list[str]:
    notes = []
    for side, trace in (("A", context.trace_a), ("B", context.trace_b)):
        if not trace.complete:
            error = trace.error or {}
            notes.append(f"run {side} ({trace.label}) is incomplete: {error.get('kind', 'stopped')} at step "
                         f"{error.get('step')}: {error.get('message')}; only steps both runs recorded are compared")
    steps_a, steps_b = set(context.steps_a), set(context.steps_b)
    if steps_a != steps_b:
        notes.append(f"run A recorded {len(steps_a)} steps and run B {len(steps_b)}; steps "
                     f"{_span(context.common_steps)} were compared")
    if context.trace_a.framework != context.trace_b.framework:
        notes.append(f"run A is {context.trace_a.framework} and run B {context.trace_b.framework}: items are "
                     "matched by name and shape")
    capture_a, capture_b = context.trace_a.config.get("capture"), context.trace_b.config.get("capture")
    if capture_a != capture_b:
        notes.append(f"the runs captured different things (capture {capture_a} vs {capture_b}); what only one "
                     "run recorded is not compared")
    if ignored:
        notes.append(f"not compared (--ignore): {', '.join(sorted(ignored))}")
    nan_steps = [step for step, a, b in context.step_pairs() if _nonfinite(a) and _nonfinite(b)]
    if nan_steps:
        notes.append(f"both runs have NaN/Inf gradients at steps {_span(nan_steps)}: equal runs can be equally "
                     "broken")
    return notes


def _nonfinite(record: dict) -> bool:
    return any((summary or {}).get("nan") or (summary or {}).get("inf")
               for summary in (record.get("gradients") or {}).values())


def _span(steps: Sequence[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"

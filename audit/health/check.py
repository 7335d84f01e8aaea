"""Run every health rule over a run and say what could not be checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from repro_audit.audit.errors import TraceError
from repro_audit.audit.health.findings import Finding, HealthReport, Thresholds
from repro_audit.audit.health.rules import ECHOES_OF_NAN, RULES, RunHealth


def check_steps(steps: Sequence[Mapping[str, Any]], *, thresholds: Thresholds | None = None,
                graph: dict[str, Any] | None = None, label: str = "run") -> HealthReport:
    """Findings of every rule over step records (the `health` key of each), in a stable order."""
    limits = thresholds or Thresholds()
    run = RunHealth.from_steps(steps, graph=graph)
    if not run.records:
        raise TraceError(f"run {label!r} has no health statistics: record it with capture.health on "
                         "(repro-audit health records it so)")
    order = {name: index for index, (name, _) in enumerate(RULES)}
    findings: list[Finding] = []
    for _, rule in RULES:
        findings.extend(rule(run, limits))
    nonfinite = run.first_nonfinite_step()
    if nonfinite is not None:
        findings = [f for f in findings if f.rule not in ECHOES_OF_NAN or f.step < nonfinite]
    layer_order = _layer_order(run)
    findings.sort(key=lambda f: (order[f.rule], layer_order.get(f.layer, len(layer_order)), f.layer, f.step))
    return HealthReport(label=label, steps=max(step for step, _ in run.records), findings=findings,
                        not_checked=not_checked(run, limits), thresholds=limits)


def check_trace(trace: Any, *, thresholds: Thresholds | None = None) -> HealthReport:
    """Findings over a recorded trace (`repro_audit.audit.trace.Trace`); its step-1 graph gives class counts."""
    return check_steps(trace.steps, thresholds=thresholds, graph=trace.graph(1), label=trace.label)


def not_checked(run: RunHealth, limits: Thresholds) -> list[str]:
    """What the rules could not look at, and why: a healthy verdict covers only the rest."""
    missing = []
    if not any(health.get("activations") for _, health in run.records):
        missing.append("saturation and dead units: no activation statistics (capture.module_outputs is off, or "
                       "a TF graph-mode recipe names no extras['module_outputs'])")
    terms = sorted(set(run.loss_terms) | set(run.initial_loss()))
    counts = run.class_counts()
    unknown = [term for term in terms if term not in counts]
    if unknown:
        missing.append(f"initial loss of {', '.join(repr(t) for t in unknown)}: number of classes unknown "
                       "(not a cross entropy in the step-1 graph; a recipe can declare "
                       "extras['num_classes'])")
    later = sum(1 for step, _ in run.records if step >= 2)
    if later < limits.memory_min_steps + 1:
        missing.append(f"memory growth: needs {limits.memory_min_steps + 2} steps, the run has "
                       f"{max((step for step, _ in run.records), default=0)} (--steps)")
    return missing


def _layer_order(run: RunHealth) -> dict[str, int]:
    """Layers and outputs in the order the first step recorded them (execution order for outputs)."""
    order: dict[str, int] = {}
    if run.records:
        _, health = run.records[0]
        for entry in health.get("activations") or []:
            call = entry.get("call", 0)
            order.setdefault(f"{entry['module']}#{call}" if call else str(entry["module"]), len(order))
        for layer in health.get("layers") or {}:
            order.setdefault(layer, len(order))
    return order

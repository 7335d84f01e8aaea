"""A terminal summary of one recorded trace: what ran, its loss terms, and where NaN entered."""

from __future__ import annotations

from repro_audit.audit.divergence import display_module
from repro_audit.audit.trace import Trace

MAX_STEPS_SHOWN = 10


def render_trace_summary(trace: Trace) -> str:
    """A few lines a researcher reads before comparing: run, completeness, losses, NaN provenance."""
    manifest = trace.manifest
    lines = [f"trace {trace.path} — run {trace.label!r} ({trace.framework}), "
             f"{manifest.get('steps_recorded', 0)} steps, {'complete' if trace.complete else 'INCOMPLETE'}"]
    if trace.error:
        lines.append(f"  stopped at step {trace.error.get('step')}: {trace.error.get('type')}: "
                     f"{trace.error.get('message')}")
    tensors = trace.initialisation.get("tensors", [])
    if tensors:
        total = sum(_numel(t.get("shape", [])) for t in tensors if t.get("kind") == "parameter")
        lines.append(f"  {len(tensors)} parameters and buffers ({total:,} parameter values)")
    steps = trace.steps
    for record in steps[:MAX_STEPS_SHOWN]:
        terms = ", ".join(f"{name}={term['value']:.6g} (x{term['weight']:g})"
                          for name, term in record.get("loss_terms", {}).items())
        nonfinite = sum(1 for g in (record.get("gradients") or {}).values() if g and (g["nan"] or g["inf"]))
        flag = f"  NON-FINITE gradients in {nonfinite} parameters" if nonfinite else ""
        lines.append(f"  step {record['step']}: total={record.get('total_loss', float('nan')):.6g}  {terms}{flag}")
    if len(steps) > MAX_STEPS_SHOWN:
        lines.append(f"  ... {len(steps) - MAX_STEPS_SHOWN} more steps not shown")
    for record in steps:
        provenance = record.get("nan_provenance")
        if not provenance:
            continue
        for origin in provenance.get("origins", [])[:3]:
            inputs = " and ".join(origin.get("inputs_from") or []) or "its inputs"
            weight = origin.get("loss_weight")
            weight_text = f" (weight {weight:g})" if isinstance(weight, (int, float)) else ""
            lines.append(f"  NaN enters at step {record['step']} in {origin['node']} ({origin['forward_op']} of "
                         f"{inputs}) in {display_module(origin.get('module'))}, loss term "
                         f"{origin.get('loss_term') or '?'}{weight_text}; "
                         f"{len(provenance.get('nonfinite_parameters', []))} parameters get non-finite gradients")
    return "\n".join(lines)


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count

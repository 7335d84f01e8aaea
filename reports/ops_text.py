"""Text of `repro-audit ops`: each nondeterministic op with its site, then known ones, then advice."""

from __future__ import annotations

import os
from typing import Any

from repro_audit.audit.ops.report import OpFinding, OpsReport

MAX_SHOWN = 20


def render_ops_text(report: OpsReport) -> str:
    plural = "s" if report.steps != 1 else ""
    lines = [(f"ops: {report.label} ({report.framework} on {report.device}), {report.steps} step{plural}, "
             f"{report.ops_checked} op calls executed twice")]
    if report.clean:
        lines.append("every op gave the same bits twice; none is known to be nondeterministic on "
                     f"{report.device}")
        lines.extend(f"note: {line}" for line in report.advice)
        return "\n".join(lines) + "\n"
    if report.findings:
        lines.append(f"{len(report.findings)} op{'s' if len(report.findings) != 1 else ''} gave different "
                     f"results on the same inputs:")
        for finding in report.findings[:MAX_SHOWN]:
            lines.extend(_finding_lines(finding))
        if len(report.findings) > MAX_SHOWN:
            lines.append(f"  ... and {len(report.findings) - MAX_SHOWN} more (--json has them all)")
    else:
        lines.append("every op gave the same bits twice in this run")
    if report.known:
        lines.append(f"known to be nondeterministic on {report.device} (may agree in one run, differ in the next):")
        for known in report.known[:MAX_SHOWN]:
            where = f" in {known['module']}" if known.get("module") else ""
            alternative = ("deterministic alternative: torch.use_deterministic_algorithms(True)"
                           if known.get("alternative") else "no deterministic alternative")
            lines.append(f"  {known['op']} ({known.get('phase')}){where}, {known.get('calls')} calls: "
                         f"{known.get('note')}; {alternative}")
        if len(report.known) > MAX_SHOWN:
            lines.append(f"  ... and {len(report.known) - MAX_SHOWN} more (--json has them all)")
    if report.advice:
        lines.append("advice:")
        lines.extend(f"  - {line}" for line in report.advice)
    return "\n".join(lines) + "\n"


def _finding_lines(finding: OpFinding) -> list[str]:
    steps = ", ".join(str(step) for step in finding.steps[:8]) + (" ..." if len(finding.steps) > 8 else "")
    where = finding.module or "(no module)"
    node = f", backward node {finding.backward_node}" if finding.backward_node else ""
    terms = ", ".join(finding.loss_terms) if finding.loss_terms else "none"
    calls_plural = "s" if finding.calls != 1 else ""
    return [f"  {finding.op} ({finding.phase}{node}) in {where}",
            f"    at {_source(finding.source)}",
            (f"    {finding.dtype}{list(finding.shape)}, steps {steps} ({finding.calls} call{calls_plural}); "
            f"loss terms: {terms}"),
            f"    {_distance(finding.distance)}"]


def _source(source: dict[str, Any] | None) -> str:
    if not source:
        return "(no user frame)"
    return f"{os.path.relpath(source['file']) if os.path.isabs(source['file']) else source['file']}:" \
           f"{source['line']} in {source.get('function')}"


def _distance(distance: dict[str, Any]) -> str:
    if "shapes" in distance:
        return f"results of different shape or dtype: {distance['shapes']} {distance.get('dtypes')}"
    text = f"{distance.get('differing')} of {distance.get('elements')} elements differ"
    if distance.get("max_abs") is not None:
        text += f", max abs difference {distance['max_abs']:.3g}"
    if distance.get("non_finite"):
        text += f", {distance['non_finite']} non-finite"
    return text

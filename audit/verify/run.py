"""`--verify`: re-run run B with each mechanism neutralised, alone and all together, and measure the effect.

Each mechanism the comparison names is a claim: "this is how the change reached the numbers". A claim is
proven when neutralising it moves run B onto run A. One at a time shows what each does; all together shows
whether they explain the whole difference; all but one (when all together restore equality) shows each is
needed. The runs go through the runner, two at a time where the machine has the cores.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from repro_audit.audit.config import RunConfig
from repro_audit.audit.divergence import Comparison
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.outputs import trace_file_name
from repro_audit.audit.runner import ProgressCallback, RunResult
from repro_audit.audit.trace import Trace
from repro_audit.audit.verify.effect import measure
from repro_audit.audit.verify.plan import Intervention, merged, plan
from repro_audit.audit.verify.result import Row, Verification

VALUES = "all"  # the distance at the last step and run A's initial values come from kept values


def needs_values(trace: Trace) -> bool:
    """Whether a trace lacks what verification reads: initial values and the last step's values."""
    return trace.values(0) is None or not trace.steps or trace.values(len(trace.steps)) is None


def verify(comparison: Comparison, config_b: RunConfig, trace_a: Trace, trace_b: Trace, folder: Path, *,
           progress: ProgressCallback | None = None) -> Verification:
    """The verification table for `comparison` of `trace_a` and `trace_b` (recorded with values kept);
    the intervened runs of `config_b` are written into `folder`."""
    interventions, untested = plan(comparison, trace_a)
    verification = Verification(untested=untested)
    verification.rows.append(Row("none (run B as recorded)", "none", [], measure(trace_a, trace_b),
                                 trace_path=str(trace_b.path)))
    if interventions:
        _run_interventions(verification, interventions, config_b, trace_a, folder, progress)
    _confirm_graph_change(verification)
    return verification


def _run_interventions(verification: Verification, interventions: list[Intervention], config_b: RunConfig,
                       trace_a: Trace, folder: Path, progress: ProgressCallback | None) -> None:
    reference = str(Path(trace_a.path).resolve())
    runs: list[tuple[str, str, list[Intervention]]] = [(i.label, "single", [i]) for i in interventions]
    if len(interventions) > 1:
        runs.append(("all of them together", "all", interventions))
    rows = _run(runs, config_b, trace_a, reference, folder, progress, offset=0)
    verification.rows.extend(rows)
    together = verification.together
    # With two, "all but one" is the other one alone: already a row.
    if len(interventions) > 2 and together is not None and together.effect is not None and together.effect.equal:
        needed = [(f"all but: {i.label}", "all_but", [o for o in interventions if o is not i]) for i in interventions]
        verification.rows.extend(_run(needed, config_b, trace_a, reference, folder, progress, offset=len(runs)))


def _confirm_graph_change(verification: Verification) -> None:
    """A changed graph has no intervention: it is confirmed harmless when run B, with every other mechanism
    neutralised (or as recorded, where there is none), matches run A on every shared number."""
    graph = [item for item in verification.untested if item.cause == "graph_change"]
    row = verification.together or verification.rows[0]
    if not graph or row.effect is None or not row.effect.equal:
        return
    verification.untested = [item for item in verification.untested if item.cause != "graph_change"]
    verification.rows.append(Row("none: the changed graph stays", "graph", ["graph_change"], row.effect,
                                 trace_path=row.trace_path))


def _run(runs: list[tuple[str, str, list[Intervention]]], config_b: RunConfig, trace_a: Trace, reference: str,
         folder: Path, progress: ProgressCallback | None, *, offset: int) -> list[Row]:
    jobs = []
    for index, (label, _, chosen) in enumerate(runs, offset + 1):
        config = replace(config_b, interventions=merged(chosen, reference),
                         capture={**config_b.capture, "values": VALUES}, label=f"{config_b.label} verify {index}")
        jobs.append((config, folder / trace_file_name(config.label, prefix=f"verify-{index}-")))
    # One run per core, at most four: the interventions are independent runs of the same config.
    results = record_all(jobs, progress=progress, workers=min(4, os.cpu_count() or 1))
    return [_row(label, kind, chosen, result, trace_a) for (label, kind, chosen), result in zip(runs, results)]


def _row(label: str, kind: str, chosen: list[Intervention], result: RunResult, trace_a: Trace) -> Row:
    causes = [i.cause for i in chosen]
    path = str(result.trace_path) if result.trace_path else None
    if not result.ok or result.trace_path is None:
        return Row(label, kind, causes, None, error=result.failure_line(), trace_path=path)
    return Row(label, kind, causes, measure(trace_a, Trace(result.trace_path)), trace_path=path)


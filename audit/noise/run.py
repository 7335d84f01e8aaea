"""Record K seeds of one or two configs through an executor and turn the traces into a NoiseResult."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from repro_audit.audit.config import RunConfig
from repro_audit.audit.executors.base import Executor, RunsDone
from repro_audit.audit.noise.bands import band, metric_names, per_step_values
from repro_audit.audit.noise.plan import noise_jobs, seeded_configs
from repro_audit.audit.noise.result import NoiseResult, SideNoise
from repro_audit.audit.noise.series import Series, run_series
from repro_audit.audit.noise.stats import DEFAULT_ALPHA, curve_test
from repro_audit.audit.runner import RunResult, raise_for_failures
from repro_audit.audit.trace import Trace


def record_noise(configs: Sequence[RunConfig], *, seeds: int, vary: str, steps: int | None, folder: Path,
                 executor: Executor, on_done: RunsDone | None = None,
                 traces_kept: bool = True) -> tuple[list[list[Trace]], list[RunResult]]:
    """K seeded runs of each config, all given to the executor at once; a run that failed twice is an error."""
    sides = [seeded_configs(config, seeds=seeds, vary=vary, steps=steps) for config in configs]
    jobs = [noise_jobs(side, folder, prefix=chr(ord("a") + index)) for index, side in enumerate(sides)]
    results = executor.run([job for side in jobs for job in side], on_done=on_done)
    raise_for_failures(results, traces_kept=traces_kept)
    return [[Trace(job.trace_path) for job in side] for side in jobs], results


def noise_result(configs: Sequence[RunConfig], traces: Sequence[Sequence[Trace]], *, vary: str,
                 alpha: float = DEFAULT_ALPHA, results: Sequence[RunResult] = ()) -> NoiseResult:
    """Bands of each side; with two sides, every metric of B tested against A's band. The parameter distance
    is measured from A's seed-0 run (so A's band of it has K-1 runs)."""
    reference = traces[0][0]
    series = [[run_series(trace, reference=None if trace is reference else reference) for trace in side]
              for side in traces]
    sides = [_side(config, side_traces, side_series, vary)
             for config, side_traces, side_series in zip(configs, traces, series)]
    result = NoiseResult(a=sides[0], b=sides[1] if len(sides) > 1 else None, alpha=alpha,
                         notes=_retry_notes(results))
    if result.b is not None:
        for metric in metric_names(series[0]):
            values_b = per_step_values(series[1], metric)
            if values_b:
                result.curves.append(curve_test(metric, per_step_values(series[0], metric), values_b, alpha=alpha))
    return result


def _side(config: RunConfig, traces: Sequence[Trace], series: list[Series], vary: str) -> SideNoise:
    bands = [band(metric, per_step_values(series, metric)) for metric in metric_names(series)]
    runs = []
    for trace in traces:
        recorded = trace.config
        runs.append({"label": trace.label, "seed": recorded.get("seed"),
                     "data_order_seed": recorded.get("data_order_seed"), "steps": len(trace.steps)})
    return SideNoise(label=config.label, source=config.source, vary=vary, bands=bands, runs=runs)


def _retry_notes(results: Sequence[RunResult]) -> list[str]:
    notes = []
    for result in results:
        if result.attempts > 1:
            error = result.first_error or {}
            notes.append(f"run {result.label!r} was retried after its first attempt ended: {error.get('kind')}: "
                         f"{error.get('message')}")
    return notes

"""Per-step series of one recorded run, read from its trace: each loss term, the total loss, the gradient
norm, the distance the parameters travelled from their own initial values, and their distance from a
reference run (the seed-0 run of run A).

Plain numbers from the trace's step records and values files; nothing here imports a framework. The
gradient norm is the global L2 norm, sqrt of the sum of every parameter's squared gradient norm (what
`clip_grad_norm_` measures). The parameter distance is the L2 norm of the difference over every parameter
both runs have with the same shape, after the optimizer step. The distance from the initial values
measures how far training moved the weights: seed-independent in scale, so a changed learning rate shows
there long before the loss separates from seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from repro_audit.audit.errors import UserError
from repro_audit.audit.trace import Trace

TOTAL_LOSS = "total_loss"
GRADIENT_NORM = "gradient_norm"
PARAMETER_DISTANCE = "parameter_distance"
DISTANCE_FROM_INIT = "distance_from_init"
LOSS_TERM = "loss_terms."  # prefix of a loss term's metric name

Series = dict[str, dict[int, float]]  # metric -> step -> value


def metric_title(metric: str) -> str:
    """How the text and the charts name a metric."""
    if metric.startswith(LOSS_TERM):
        return f"loss term {metric[len(LOSS_TERM):]}"
    return {TOTAL_LOSS: "loss", GRADIENT_NORM: "gradient norm",
            DISTANCE_FROM_INIT: "parameter distance from its initial values",
            PARAMETER_DISTANCE: "parameter distance from A's seed-0 run"}.get(metric, metric)


def run_series(trace: Trace, *, reference: Trace | None) -> Series:
    """The run's series; the parameter distance only when a reference is given (and is not this trace)."""
    series: Series = {TOTAL_LOSS: {}, GRADIENT_NORM: {}}
    for record in trace.steps:
        step = int(record["step"])
        if record.get("total_loss") is not None:
            series[TOTAL_LOSS][step] = float(record["total_loss"])
        for name, term in (record.get("loss_terms") or {}).items():
            if isinstance(term, dict) and term.get("value") is not None:
                series.setdefault(LOSS_TERM + name, {})[step] = float(term["value"])
        norms = [float(summary["norm"]) for summary in (record.get("gradients") or {}).values()
                 if summary and summary.get("norm") is not None]
        if norms:
            series[GRADIENT_NORM][step] = math.sqrt(sum(norm * norm for norm in norms))
    series[DISTANCE_FROM_INIT] = distances_from_init(trace)
    if reference is not None:
        series[PARAMETER_DISTANCE] = parameter_distances(trace, reference)
    return {metric: values for metric, values in series.items() if values}


def parameter_distances(trace: Trace, reference: Trace) -> dict[int, float]:
    """Step -> L2 distance of the parameters from the reference run's at the same step."""
    distances = {}
    for step in _common_steps(trace, reference):
        mine, theirs = trace.values(step), reference.values(step)
        if mine is None or theirs is None:
            raise UserError(f"trace {trace.path} or {reference.path} kept no parameter values at step {step}: "
                            "record with capture.values all")
        total = 0.0
        for key in _parameter_keys(mine.keys(), theirs.keys()):
            a, b = mine.get(key), theirs.get(key)
            if a is None or b is None or a.shape != b.shape:
                continue
            difference = a.astype(np.float64) - b.astype(np.float64)
            total += float(np.dot(difference.ravel(), difference.ravel()))
        distances[step] = math.sqrt(total)
    return distances


def distances_from_init(trace: Trace) -> dict[int, float]:
    """Step -> L2 distance of the parameters from the run's own initial values (values/step 0)."""
    initial = trace.values(0)
    if initial is None:
        return {}
    distances = {}
    for record in trace.steps:
        step = int(record["step"])
        values = trace.values(step)
        if values is None:
            continue
        total = 0.0
        for key in sorted(values.keys()):
            if not key.startswith("parameters/"):
                continue
            now, start = values.get(key), initial.get("initial/" + key[len("parameters/"):])
            if now is None or start is None or now.shape != start.shape:
                continue
            difference = now.astype(np.float64) - start.astype(np.float64)
            total += float(np.dot(difference.ravel(), difference.ravel()))
        distances[step] = math.sqrt(total)
    return distances


def _common_steps(trace: Trace, reference: Trace) -> list[int]:
    steps = {int(record["step"]) for record in trace.steps}
    return sorted(steps & {int(record["step"]) for record in reference.steps})


def _parameter_keys(keys_a: Iterable[str], keys_b: Iterable[str]) -> list[str]:
    return sorted({key for key in keys_a if key.startswith("parameters/")} & set(keys_b))

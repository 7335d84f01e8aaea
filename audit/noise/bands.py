"""Seed-to-seed bands: per step, the median and spread of a metric over K runs of one config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro_audit.audit.noise.series import Series


@dataclass
class Band:
    """One metric of one config: per step the median, the range (min to max) and the standard deviation of
    the runs that recorded it."""

    metric: str
    steps: list[int]
    median: list[float]
    low: list[float]
    high: list[float]
    std: list[float]
    runs: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "steps": self.steps, "median": self.median, "low": self.low,
                "high": self.high, "std": self.std, "runs": self.runs}

    def at(self, step: int) -> tuple[float, float, float] | None:
        """(median, low, high) at `step`, None where no run recorded it."""
        if step not in self.steps:
            return None
        index = self.steps.index(step)
        return self.median[index], self.low[index], self.high[index]


def per_step_values(runs: Sequence[Series], metric: str) -> dict[int, list[float]]:
    """Step -> the metric's value in each run that has it, in run order."""
    values: dict[int, list[float]] = {}
    for series in runs:
        for step, value in (series.get(metric) or {}).items():
            values.setdefault(step, []).append(value)
    return dict(sorted(values.items()))


def band(metric: str, values: dict[int, list[float]]) -> Band:
    steps = [step for step, found in values.items() if found]
    arrays = [np.asarray(values[step], dtype=np.float64) for step in steps]
    return Band(metric=metric, steps=steps,
                median=[float(np.median(a)) for a in arrays], low=[float(a.min()) for a in arrays],
                high=[float(a.max()) for a in arrays],
                std=[float(a.std(ddof=1)) if a.size > 1 else 0.0 for a in arrays],
                runs=[int(a.size) for a in arrays])


def metric_names(runs: Sequence[Series]) -> list[str]:
    """Every metric any run has: the loss first, loss terms in name order, then gradient norm and distances."""
    from repro_audit.audit.noise.series import (
        DISTANCE_FROM_INIT,
        GRADIENT_NORM,
        PARAMETER_DISTANCE,
        TOTAL_LOSS,
    )

    found = {metric for series in runs for metric in series}
    fixed_last = [GRADIENT_NORM, DISTANCE_FROM_INIT, PARAMETER_DISTANCE]
    terms = sorted(found - {TOTAL_LOSS, *fixed_last})
    return [metric for metric in [TOTAL_LOSS, *terms, *fixed_last] if metric in found]

"""Is run B's curve outside run A's seed-to-seed spread? A stated test per step, not a look at a chart.

Per step: Welch's t-test (two-sided, unequal variances) of A's K values against B's K values, from scipy.
The p-values of one curve's steps are adjusted together (Benjamini-Hochberg), since a curve of many steps
would otherwise find "significant" steps by chance. A step counts as outside when its adjusted p-value is
below alpha and B's median also lies outside A's range (min to max): significance alone can flag a shift far
smaller than the spread when the spread is tiny. The effect size is Cohen's d (pooled standard deviation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro_audit.audit.errors import UserError

DEFAULT_ALPHA = 0.05
TEST_NAME = ("Welch's t-test per step (two-sided), p-values adjusted over each curve's steps by "
             "Benjamini-Hochberg; outside = adjusted p < alpha and B's median outside A's range")


@dataclass
class StepTest:
    step: int
    median_b: float
    p_value: float | None  # None: too few runs on a side to test
    p_adjusted: float | None
    effect_size: float | None
    outside: bool

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "median_b": self.median_b, "p_value": self.p_value,
                "p_adjusted": self.p_adjusted, "effect_size": self.effect_size, "outside": self.outside}


@dataclass
class CurveTest:
    """B's curve of one metric against A's band."""

    metric: str
    steps: list[StepTest] = field(default_factory=list)

    @property
    def outside_steps(self) -> list[int]:
        return [test.step for test in self.steps if test.outside]

    @property
    def first_outside(self) -> int | None:
        outside = self.outside_steps
        return outside[0] if outside else None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "first_outside": self.first_outside, "outside_steps": self.outside_steps,
                "steps": [test.to_dict() for test in self.steps]}


def curve_test(metric: str, values_a: dict[int, list[float]], values_b: dict[int, list[float]], *,
               alpha: float = DEFAULT_ALPHA) -> CurveTest:
    """Test every step both sides recorded."""
    stats = _scipy_stats()
    steps = sorted(set(values_a) & set(values_b))
    raw = [_welch(np.asarray(values_a[step], float), np.asarray(values_b[step], float), stats) for step in steps]
    testable = [index for index, p in enumerate(raw) if p is not None]
    adjusted: list[float | None] = [None] * len(steps)
    if testable:
        corrected = stats.false_discovery_control([raw[index] for index in testable], method="bh")
        for index, value in zip(testable, corrected):
            adjusted[index] = float(min(1.0, value))
    curve = CurveTest(metric)
    for index, step in enumerate(steps):
        a, b = np.asarray(values_a[step], float), np.asarray(values_b[step], float)
        median_b = float(np.median(b))
        beyond = median_b < float(a.min()) or median_b > float(a.max())
        p_adjusted = adjusted[index]
        curve.steps.append(StepTest(step=step, median_b=median_b, p_value=raw[index], p_adjusted=p_adjusted,
                                    effect_size=cohens_d(a, b),
                                    outside=p_adjusted is not None and p_adjusted < alpha and beyond))
    return curve


def cohens_d(a: np.ndarray, b: np.ndarray) -> float | None:
    """(mean B - mean A) / pooled standard deviation; infinite when neither side varies but they differ."""
    if a.size < 2 or b.size < 2:
        return None
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    shift = float(b.mean() - a.mean())
    if pooled == 0.0:
        return 0.0 if shift == 0.0 else math.copysign(math.inf, shift)
    return shift / pooled


def _welch(a: np.ndarray, b: np.ndarray, stats: Any) -> float | None:
    if a.size < 2 or b.size < 2:
        return None
    if np.ptp(a) == 0.0 and np.ptp(b) == 0.0:  # no spread on either side: equal or certainly different
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError:
        raise UserError("scipy is not installed, and the band test needs it: pip install 'repro-audit[stats]'") \
            from None
    return stats


def p_text(p: float | None) -> str:
    if p is None:
        return "untested"
    return f"{p:.2g}" if p >= 1e-4 else "< 0.0001"


def p_phrase(p: float | None) -> str:
    """`p = 0.012`, `p < 0.0001`: for sentences."""
    text = p_text(p)
    return text if text.startswith("<") else f"= {text}"

"""What `noise` and `diff --seeds` found: each config's bands and, with two configs, B's curves tested
against A's bands, named in words. Presenters only print this."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.noise.bands import Band
from repro_audit.audit.noise.series import TOTAL_LOSS, metric_title
from repro_audit.audit.noise.stats import TEST_NAME, CurveTest, p_phrase


@dataclass
class SideNoise:
    """K runs of one config: their bands, and which seeds they ran with."""

    label: str
    source: str | None
    vary: str
    bands: list[Band]
    runs: list[dict[str, Any]]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def band(self, metric: str) -> Band | None:
        return next((band for band in self.bands if band.metric == metric), None)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "source": self.source, "vary": self.vary, "seeds": self.seeds,
                "runs": self.runs, "bands": [band.to_dict() for band in self.bands]}


@dataclass
class NoiseResult:
    a: SideNoise
    b: SideNoise | None = None
    curves: list[CurveTest] = field(default_factory=list)
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)

    @property
    def outside_metrics(self) -> list[str]:
        """The metrics of B that lie outside A's spread at some step, in the order of A's bands."""
        return [curve.metric for curve in self.curves if curve.first_outside is not None]

    @property
    def outside(self) -> bool:
        """Some curve of B lies outside A's spread at some step (the exit code of `diff --seeds`)."""
        return bool(self.outside_metrics)

    def headline(self) -> str:
        """The verdict, naming the quantities of B that leave A's spread and from which step (the loss can stay
        inside while the weights have already moved far apart); else that the loss stays in."""
        if self.b is None or not self.outside:
            return self.verdict(TOTAL_LOSS)
        named = []
        for metric in self.outside_metrics:
            curve = self.curve(metric)
            assert curve is not None
            named.append(f"{metric_title(metric)} (from step {curve.first_outside})")
        listed = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
        verb = "lies" if len(named) == 1 else "lie"
        loss = "" if TOTAL_LOSS in self.outside_metrics else f"; not the loss: {self.verdict(TOTAL_LOSS)}"
        return f"B's {listed} {verb} outside A's seed-to-seed spread{loss}"

    def curve(self, metric: str) -> CurveTest | None:
        return next((curve for curve in self.curves if curve.metric == metric), None)

    def verdict(self, metric: str = TOTAL_LOSS) -> str:
        """One sentence: where B's curve of `metric` lies against A's spread, or A's spread alone."""
        if self.b is None:
            return self._spread_sentence(metric)
        curve = self.curve(metric)
        title = metric_title(metric)
        if curve is None or not curve.steps:
            return f"B's {title} was not compared (not recorded by both configs)"
        tested = [test for test in curve.steps if test.p_adjusted is not None]
        if not tested:
            return f"B's {title} could not be tested (too few runs on a side at every step)"
        first = curve.first_outside
        if first is None:
            closest = min(tested, key=lambda test: (test.p_adjusted, test.step))
            return (f"B's {title} is within A's seed-to-seed spread at every step (smallest adjusted p "
                    f"{p_phrase(closest.p_adjusted)}, at step {closest.step})")
        at = next(test for test in curve.steps if test.step == first)
        later = [test for test in curve.steps if test.step >= first]
        extent = "" if all(test.outside for test in later) else \
            f" (at {len(curve.outside_steps)} of {len(curve.steps)} steps)"
        return (f"B's {title} is outside A's seed-to-seed spread from step {first}{extent}: adjusted p "
                f"{p_phrase(at.p_adjusted)}, effect size d = {_number(at.effect_size)}")

    def _spread_sentence(self, metric: str) -> str:
        band = self.a.band(metric)
        if band is None or not band.steps:
            return f"no {metric_title(metric)} recorded"
        median, low, high = band.median[-1], band.low[-1], band.high[-1]
        relative = f" ({(high - low) / abs(median):.1%} of the median)" if median else ""
        return (f"{metric_title(metric)} of {self.a.label} over {self.a.seeds} seeds (vary {self.a.vary}) at step "
                f"{band.steps[-1]}: median {median:.6g}, range {low:.6g} to {high:.6g}{relative}")

    def to_dict(self) -> dict[str, Any]:
        metrics = [band.metric for band in self.a.bands]
        return {
            "kind": "noise",
            "a": self.a.to_dict(),
            "b": self.b.to_dict() if self.b is not None else None,
            "test": TEST_NAME if self.b is not None else None,
            "alpha": self.alpha,
            "outside": self.outside if self.b is not None else None,
            "outside_metrics": self.outside_metrics,
            "headline": self.headline(),
            "verdicts": {metric: self.verdict(metric) for metric in metrics},
            "curves": [curve.to_dict() for curve in self.curves],
            "notes": list(self.notes),
        }


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}"

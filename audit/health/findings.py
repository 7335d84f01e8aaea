"""What a health rule returns, and the thresholds every rule reads.

A finding names the anomaly, the layer, the first step it showed and the number that crossed the
threshold, so a presenter can print it without deciding anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# What each rule is called in a report, in the order the rules run.
RULE_TITLES = {
    "nonfinite_gradients": "non-finite gradients",
    "exploding_gradients": "exploding gradients",
    "vanishing_gradients": "vanishing gradients",
    "saturation": "saturated activations",
    "dead_units": "dead units",
    "initial_loss": "initial loss far from -log(1/C)",
    "memory_growth": "memory growing every step",
}
SHARE_RULES = frozenset({"saturation", "dead_units"})  # rules whose value and threshold are shares of 1


@dataclass(frozen=True)
class Thresholds:
    """Where each rule draws its line; the defaults are the CLI's defaults (docs/health.md explains them)."""

    max_grad_norm: float = 1e3  # a layer's gradient L2 norm above this explodes
    min_grad_norm: float = 1e-7  # a layer's gradient L2 norm below this vanishes
    min_grad_ratio: float = 1e-6  # ... or below this fraction of the largest layer's norm in the same step
    saturation: float = 0.25  # share of a tanh/sigmoid output that is saturated
    dead_units: float = 0.25  # share of a ReLU-like output's units that are never positive in the batch
    initial_loss_tolerance: float = 0.5  # |loss - log C| above this fraction of log C at step 1
    memory_growth_mb: float = 1.0  # growth (MiB) memory must show at every step to count as growing
    memory_min_steps: int = 3  # growths in a row (from step 2 on) before growth counts as steady

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Finding:
    """One anomaly at one layer (or the whole run), first seen at `step`, with the numbers behind it."""

    rule: str  # "exploding_gradients", "vanishing_gradients", "saturation", "dead_units", "initial_loss", ...
    layer: str  # module path, loss term or memory kind; "" is the root module
    step: int  # first step where the threshold was crossed
    measure: str  # what was measured, e.g. "gradient norm"
    value: float  # the number at `step` that crossed the threshold
    threshold: float
    message: str  # one sentence with the numbers
    steps: list[int] = field(default_factory=list)  # every step where it was crossed
    worst: dict[str, Any] | None = None  # {"step": k, "value": v} when a later step was worse
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HealthReport:
    """Every finding of one run, in a stable order, and what could not be checked and why."""

    label: str
    steps: int
    findings: list[Finding]
    not_checked: list[str] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def healthy(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "steps": self.steps, "healthy": self.healthy,
                "findings": [finding.as_dict() for finding in self.findings],
                "not_checked": list(self.not_checked), "thresholds": self.thresholds.as_dict()}


def format_number(value: float) -> str:
    """A measured number in a sentence: 3 significant digits, scientific outside [1e-3, 1e4)."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"


def format_share(share: float) -> str:
    return f"{share * 100:.0f}%" if math.isfinite(share) else str(share)


def format_value(rule: str, value: float) -> str:
    """A finding's value or threshold as every report prints it: shares in percent, the rest as numbers."""
    return format_share(value) if rule in SHARE_RULES else format_number(value)


def format_extent(rule: str, steps: Sequence[int], worst: Mapping[str, Any] | None) -> str:
    """How far a finding reaches past its first step ("at 3 steps; worst 52% at step 2"), "" when it does not."""
    parts = []
    if len(steps) > 1 and rule != "memory_growth":  # memory growth is at every step by definition
        parts.append(f"at {len(steps)} steps")
    if worst:
        parts.append(f"worst {format_value(rule, worst['value'])} at step {worst['step']}")
    return "; ".join(parts)

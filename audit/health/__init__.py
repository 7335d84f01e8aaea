"""Training health: anomaly rules over the `health` statistics of a recorded run (docs/health.md).

Rules decide (one function per anomaly in `rules`), presenters only print. Nothing here imports a
framework: the rules read plain step records.
"""

from __future__ import annotations

from repro_audit.audit.health.check import check_steps, check_trace, not_checked
from repro_audit.audit.health.classes import ClassCount, infer_num_classes
from repro_audit.audit.health.findings import RULE_TITLES, Finding, HealthReport, Thresholds, format_value
from repro_audit.audit.health.rules import RULES, RunHealth

__all__ = ["RULES", "RULE_TITLES", "ClassCount", "Finding", "HealthReport", "RunHealth", "Thresholds",
           "check_steps", "check_trace", "format_value", "infer_num_classes", "not_checked"]

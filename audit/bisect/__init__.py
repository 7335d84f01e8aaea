"""Config (and code) bisection: the smallest set of changes from A to B that reproduces B's divergence."""

from __future__ import annotations

from repro_audit.audit.bisect.changes import Change, apply_changes, code_changes, config_changes
from repro_audit.audit.bisect.ddmin import ddmin
from repro_audit.audit.bisect.result import BisectResult, Identity
from repro_audit.audit.bisect.run import Bisection, first_divergence

__all__ = ["BisectResult", "Bisection", "Change", "Identity", "apply_changes", "code_changes", "config_changes",
           "ddmin", "first_divergence"]

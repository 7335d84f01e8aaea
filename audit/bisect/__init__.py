"""Config (and code) bisection: the smallest set of changes from A to B that reproduces B's divergence."""

from __future__ import annotations

from audit.bisect.changes import Change, apply_changes, code_changes, config_changes
from audit.bisect.ddmin import ddmin
from audit.bisect.result import BisectResult, Identity
from audit.bisect.run import Bisection, first_divergence

__all__ = ["BisectResult", "Bisection", "Change", "Identity", "apply_changes", "code_changes", "config_changes",
           "ddmin", "first_divergence"]

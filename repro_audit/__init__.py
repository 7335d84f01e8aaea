"""repro-audit: record training runs into traces, compare them, explain the first divergence.

The one top-level name the tool installs, so that a project with its own `audit`, `probes` or `reports`
package can be recorded. `audit/`, `probes/` and `reports/` at the repository root are this package's
`repro_audit.audit`, `repro_audit.probes` and `repro_audit.reports`: the links beside this file make a
checkout importable as it is (mypy and `PYTHONPATH` see the same names as an install), and a wheel holds
copies (docs/install.md). Recipes write `from repro_audit import Recipe`.
"""

from __future__ import annotations

from repro_audit.audit import __version__
from repro_audit.audit.attach import attach
from repro_audit.audit.recipe import Recipe

__all__ = ["Recipe", "attach", "__version__"]

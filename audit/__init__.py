"""repro-audit: record training runs into traces, compare them, explain the first divergence.

Nothing in this package imports torch or TensorFlow at import time, so `repro-audit --help` is instant.
"""

from __future__ import annotations

from repro_audit.audit.attach import attach
from repro_audit.audit.recipe import Recipe

__all__ = ["Recipe", "attach", "__version__"]
__version__ = "0.1.0"

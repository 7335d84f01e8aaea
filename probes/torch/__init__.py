"""The PyTorch side of every probe. Imported only inside a run's subprocess or by attach mode."""

from __future__ import annotations

from repro_audit.audit.errors import FrameworkMissing


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise FrameworkMissing("PyTorch is not installed: pip install 'repro-audit[torch]'") from exc

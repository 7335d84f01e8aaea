"""RETURNN's own engine, with our probes attached to what it builds. Imported only inside a run's worker."""

from __future__ import annotations

from repro_audit.audit.errors import FrameworkMissing


def require_returnn() -> None:
    try:
        import returnn  # noqa: F401
        import tree  # noqa: F401  (dm-tree: RETURNN needs it but does not declare it)
    except ImportError as exc:
        raise FrameworkMissing("RETURNN is not installed: pip install 'repro-audit[returnn]'") from exc

"""Executors: where the runs of `noise`, `diff --seeds` and `bisect` go (a local process pool, or Ray)."""

from __future__ import annotations

from repro_audit.audit.executors.base import Executor, RunJob, RunsDone, worth_retrying
from repro_audit.audit.executors.local import LocalPool

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "Executor", "LocalPool", "RunJob", "RunsDone", "make_executor", "worth_retrying"]


def make_executor(kind: str = "local", *, address: str | None = None, workers: int | None = None) -> Executor:
    """`local`: this machine's cores (`workers` at a time); `ray`: the cluster at `address` ('auto', host:port,
    or 'local' for an instance of our own)."""
    if kind == "local":
        return LocalPool(workers=workers)
    if kind == "ray":
        from repro_audit.audit.executors.ray_pool import LOCAL, RayPool

        return RayPool(address=address or LOCAL, num_cpus=workers)
    from repro_audit.audit.errors import UserError

    raise UserError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")

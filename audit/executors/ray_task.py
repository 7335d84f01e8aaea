"""What a Ray worker does for one run: record it in an isolated worker process, pack the trace as bytes.

Kept free of Ray itself so a worker imports only what a run needs. The trace travels back to the caller
inside the task's result (a tar archive in memory), so no shared filesystem is needed for the traces; the
recipe's folder must still be at the same path on the node (docs/noise.md).
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.executors.base import thread_env
from repro_audit.audit.runner import record

TRACE_NAME = "run.trace"


def record_packed(payload: dict[str, Any]) -> dict[str, Any]:
    """Record the run described by `payload` (RunConfig.to_dict and where it came from) on this node."""
    config = RunConfig.from_dict(payload["config"], config_dir=payload.get("config_dir"), source=payload.get("source"))
    with tempfile.TemporaryDirectory(prefix="repro-audit-ray-") as scratch:
        trace = Path(scratch) / TRACE_NAME
        result = record(config, trace, env=payload.get("thread_env"), mode=payload.get("mode", "record"),
                        zoom=payload.get("zoom"))
        archive = _pack(trace) if result.trace_path is not None and trace.exists() else None
    return {"ok": result.ok, "error": result.error, "seconds": result.seconds, "archive": archive}


def job_payload(config: RunConfig, *, mode: str = "record", zoom: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"config": config.to_dict(), "config_dir": config.config_dir, "source": config.source,
            "mode": mode, "zoom": zoom,
            # Decided by the caller, so a run has the thread count (and the float reductions) it would have
            # had in the local pool, whatever the node's Ray worker has set.
            "thread_env": thread_env()}


def unpack(archive: bytes, target: Path) -> None:
    """Put a packed trace at `target`: extracted beside it, then renamed, so `target` appears whole.
    Only plain files and folders are extracted (tarfile's data filter), nothing outside the folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=target.parent) as scratch:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            tar.extractall(scratch, filter="data")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        (Path(scratch) / TRACE_NAME).rename(target)


def _pack(trace: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(trace, arcname=TRACE_NAME)
    return buffer.getvalue()

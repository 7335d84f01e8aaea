"""Write a trace atomically while streaming steps.

Everything goes into `<path>.partial/` first, locked for the writer's life (audit/trace/staging.py); each
step is appended to steps.jsonl and flushed, so a crash at step k keeps steps before k. `finish` lists
every file with its digest in the manifest (audit/trace/integrity.py) and renames the folder into place;
if the process dies first, the parent runner calls `finalize_partial` to do the same with
`complete: false`. A write the OS refuses (full disk, read-only folder) is an OutputError naming the trace,
and a writer that lost a write never calls its trace complete.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from repro_audit.audit.errors import OutputError
from repro_audit.audit.trace import format as fmt
from repro_audit.audit.trace.integrity import inventory
from repro_audit.audit.trace.staging import (
    StagingLock,
    check_replaceable,
    claim_staging,
    is_trace,
    lock_staging,
    move_into_place,
    output_error,
    staging_path,
)
from repro_audit.audit.trace.step_lines import dumps_step

LOCK_WAIT_S = 2.0  # finalize_partial waits this long for the processes of a killed run to let go of the lock


class TraceWriter:
    """The only way probes put data into a trace."""

    def __init__(self, path: str | os.PathLike[str], *, framework: str, config: Mapping[str, Any],
                 label: str) -> None:
        self.final_path = Path(path)
        self.staging = staging_path(self.final_path)
        check_replaceable(self.final_path)  # refused now, not after the run
        self._lock: StagingLock = claim_staging(self.final_path)
        self.manifest: dict[str, Any] = {
            "format": fmt.TRACE_FORMAT,
            "schema_version": fmt.SCHEMA_VERSION,
            "framework": framework,
            "label": label,
            "config": dict(config),
            "complete": False,
            "steps_recorded": 0,
            "error": None,
        }
        self._lost: str | None = None  # the first write the OS refused
        self._records = 0
        try:
            self._write_text(fmt.MANIFEST, fmt.dumps(self.manifest))
            self._steps = open(self.staging / fmt.STEPS, "a", encoding="utf-8")
        except BaseException:
            self._lock.release()
            raise

    def write_json(self, name: str, data: Mapping[str, Any]) -> None:
        """Write (or replace) one of environment.json, structure.json, initialisation.json atomically."""
        self._write_text(name, fmt.dumps(data))

    def write_graph(self, step: int, graph: Mapping[str, Any]) -> str:
        relative = fmt.graph_file(step)
        self._write_text(relative, fmt.dumps(graph))
        return relative

    def write_values(self, step: int, tensors: Mapping[str, np.ndarray]) -> str | None:
        """Keep tensor values of one step in a safetensors file; returns its path inside the trace."""
        if not tensors:
            return None
        from safetensors.numpy import save_file

        relative = fmt.values_file(step)
        target = self.staging / relative
        tmp = target.with_suffix(".tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.touch()  # created as any new file is (0o666 less the umask); safetensors makes its own 0600
            mode = os.stat(tmp).st_mode & 0o777
            save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()}, str(tmp))
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except Exception as exc:  # OSError, or safetensors' own error for a failed write
            tmp.unlink(missing_ok=True)
            raise self._refused(exc) from exc
        return relative

    def append_step(self, record: Mapping[str, Any]) -> None:
        """Stream one step record. Flushed, so a crash or kill right after keeps it (the OS holds what a
        dead process wrote); synced to disk once, in `finish`: an fsync per step cost ~3 ms here."""
        if self._lost:
            raise OutputError(f"cannot write the trace {self.final_path}: an earlier write failed ({self._lost})")
        line = dumps_step(record) + "\n"
        try:
            self._steps.write(line)
            self._steps.flush()
        except OSError as exc:
            raise self._refused(exc) from exc
        self._records += 1
        self.manifest["steps_recorded"] = int(record["step"])

    def finish(self, *, complete: bool, error: Mapping[str, Any] | None = None) -> Path:
        """Close the trace and move it into place; the final path appears only now."""
        try:
            self._close_steps()
            if complete and self._lost:
                raise OutputError(f"cannot finish the trace {self.final_path}: a write failed ({self._lost}); it "
                                  f"stays incomplete in {self.staging}")
            files, lines = inventory(self.staging)
            if complete and lines != self._records:
                raise OutputError(f"cannot finish the trace {self.final_path}: steps.jsonl holds {lines} steps, "
                                  f"{self._records} were written")
            self.manifest.update(complete=complete, error=dict(error) if error else None, files=files,
                                 step_records=lines)
            self._write_text(fmt.MANIFEST, fmt.dumps(self.manifest))
            final = move_into_place(self._lock)
        except OSError as exc:
            raise output_error(self.final_path, exc) from exc
        # Released only once the trace is in place: a failed finish keeps the folder locked, so that this
        # writer can still finish it incomplete, until the process ends.
        self._lock.release()
        return final

    def _close_steps(self) -> None:
        if self._steps.closed:
            return
        try:
            self._steps.flush()
            os.fsync(self._steps.fileno())
            self._steps.close()
        except OSError as exc:
            self._lost = self._lost or (exc.strerror or str(exc))
            try:
                self._steps.close()  # retries the flush: what it adds is a cut line, counted as such
            except OSError:
                pass

    def _write_text(self, relative: str, text: str) -> None:
        target = self.staging / relative
        tmp = target.with_name(target.name + ".tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._refused(exc) from exc

    def _refused(self, exc: Exception) -> OutputError:
        """Remember the lost write (the trace can no longer be complete) and say what the OS said."""
        self._lost = self._lost or (getattr(exc, "strerror", None) or str(exc))
        if isinstance(exc, OSError):
            return output_error(self.final_path, exc)
        return OutputError(f"cannot write the trace {self.final_path}: {exc}")


def finalize_partial(final_path: str | os.PathLike[str], *, error: Mapping[str, Any]) -> Path | None:
    """Turn what a dead run left in `<path>.partial/` into an incomplete, readable trace.

    Called by the parent process after a crash, a kill or a timeout. Returns None if the run died before
    it wrote anything. The manifest says what is there: the complete step lines and the digest of every
    file. OutputError if another process writes to the same path, or the disk refuses the manifest.
    """
    final = Path(final_path)
    staging = staging_path(final)
    if staging.is_symlink() or not is_trace(staging):
        return None  # the run wrote nothing, or what is there is not a trace this tool began
    lock = lock_staging(final, wait=LOCK_WAIT_S)
    if lock is None:
        return None
    try:
        manifest = json.loads((staging / fmt.MANIFEST).read_text(encoding="utf-8"))
        files, lines = inventory(staging)
        manifest.update(complete=False, error=dict(error), files=files, step_records=lines,
                        steps_recorded=_last_step(staging / fmt.STEPS))
        _replace_text(staging / fmt.MANIFEST, fmt.dumps(manifest))
        return move_into_place(lock)
    except OSError as exc:
        raise output_error(final, exc) from exc
    finally:
        lock.release()


def _last_step(steps_file: Path) -> int:
    """The step of the last complete line of steps.jsonl (0 for none); what follows the last newline was
    cut by the crash. Found from the end of the file, which may be large."""
    if not steps_file.exists() or steps_file.stat().st_size == 0:
        return 0
    with open(steps_file, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        end = data.rfind(b"\n")
        line = data[data.rfind(b"\n", 0, max(end, 0)) + 1:end] if end >= 0 else b""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return 0


def _replace_text(target: Path, text: str) -> None:
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise

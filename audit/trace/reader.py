"""Read a trace lazily and refuse what it cannot read safely.

Nothing is unpickled: traces are JSON, JSON lines and safetensors. Tensor values are opened only when
asked for, so comparing hashes of a large run never reads its values. Every problem is one TraceError:
a file that is not valid UTF-8 JSON, nested too deep, of the wrong shape (audit/trace/validate.py), a link
(a trace holds only its own files), or, from schema 4 on, a file that is missing, unlisted, or not what
the manifest's size and digest say (audit/trace/integrity.py: which file is checked when).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from repro_audit.audit.errors import TraceError
from repro_audit.audit.trace import format as fmt
from repro_audit.audit.trace import validate as schemas
from repro_audit.audit.trace.health_fill import complete_health, module_types
from repro_audit.audit.trace.integrity import (
    check_digest,
    check_file_digest,
    check_members,
    member_stat,
    member_step,
    refuse_symlink,
)
from repro_audit.audit.trace.schema import Schema
from repro_audit.audit.trace.staging import MAX_MANIFEST_BYTES
from repro_audit.audit.trace.validate import validate

# What deriving the health record raises on summaries that do not add up (audit/trace/health_fill.py).
HEALTH_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError)


class Trace:
    """One recorded run, opened from its folder."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise TraceError(f"trace not found: {self.path}")
        if not self.path.is_dir() or not os.path.lexists(self.path / fmt.MANIFEST):
            from repro_audit.audit.trace.ranks import is_ranked_run

            if self.path.is_dir() and is_ranked_run(self.path):
                raise TraceError(f"{self.path} is a run of several ranks (launch/--nproc), not one trace: give one "
                                 f"rank's folder ({self.path / 'rank_00'}), or compare two such runs")
            raise TraceError(f"not a repro-audit trace (no {fmt.MANIFEST}): {self.path}")
        # Listed files and their digests (schema 4); None for older traces, which are read as before.
        self._files: dict[str, dict[str, Any]] | None = None
        self.manifest = self._load_manifest()
        if fmt.lists_digests(self.schema_version):
            self._files = self.manifest.get("files")
            if self._files is None and self.complete:
                raise TraceError(f"trace {self.path} is corrupt: it says it is complete but its manifest lists no "
                                 "files to prove it")
        if self._files is not None:
            missing = [key for key in ("step_records", "steps_recorded") if key not in self.manifest]
            if missing:
                raise TraceError(f"trace {self.path} is corrupt: its manifest lists files but not {missing[0]}")
            check_members(self.path, self._files)
        self._graphs: dict[int, dict[str, Any] | None] = {}

    @property
    def schema_version(self) -> int:
        return int(self.manifest["schema_version"])

    @property
    def framework(self) -> str:
        return str(self.manifest.get("framework", "unknown"))

    @property
    def label(self) -> str:
        return str(self.manifest.get("label") or self.path.name)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def error(self) -> dict[str, Any] | None:
        return self.manifest.get("error")

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})

    @cached_property
    def environment(self) -> dict[str, Any]:
        return self._load_optional(fmt.ENVIRONMENT, schemas.ENVIRONMENT)

    @cached_property
    def structure(self) -> dict[str, Any]:
        return self._load_optional(fmt.STRUCTURE, schemas.STRUCTURE)

    @cached_property
    def initialisation(self) -> dict[str, Any]:
        return self._load_optional(fmt.INITIALISATION, schemas.INITIALISATION)

    @cached_property
    def steps(self) -> list[dict[str, Any]]:
        """All step records. A cut last line is dropped only when the trace says it is incomplete."""
        data = self._read(fmt.STEPS)
        lines = data.split(b"\n") if data else []
        cut = lines.pop() if lines else b""  # what follows the last newline
        records = [self._step_record(line, number) for number, line in enumerate(lines, start=1)]
        if cut and self.complete:  # the last line of a complete trace must be whole
            records.append(self._step_record(cut, len(lines) + 1))
        if data is not None:
            self._verify(fmt.STEPS, data)
        self._check_step_count(len(lines), records)
        return records

    def step(self, number: int) -> dict[str, Any] | None:
        for record in self.steps:
            if record.get("step") == number:
                return record
        return None

    def graph(self, step: int) -> dict[str, Any] | None:
        """The op-level graph recorded at `step`, if the probes kept one for it."""
        if step not in self._graphs:
            relative = fmt.graph_file(step)
            self._graphs[step] = self._load_json(relative, schemas.GRAPH) if self._has(relative) else None
        return self._graphs[step]

    def graph_steps(self) -> list[int]:
        return self._member_steps(fmt.GRAPHS_DIR)

    def values(self, step: int) -> StepValues | None:
        relative = fmt.values_file(step)
        if not self._has(relative):
            return None
        expected = self._files.get(relative) if self._files is not None else None
        return StepValues(self.path / relative, expected=expected, trace=self.path)

    def log_text(self) -> str:
        if member_stat(self.path, fmt.LOG) is None:
            return ""
        return (self.path / fmt.LOG).read_text(encoding="utf-8", errors="replace")

    # -- reading --------------------------------------------------------------------------------------

    def _load_manifest(self) -> dict[str, Any]:
        info = member_stat(self.path, fmt.MANIFEST)
        if info is not None and info.st_size > MAX_MANIFEST_BYTES:
            raise TraceError(f"trace {self.path} is corrupt: {fmt.MANIFEST} has {info.st_size} bytes")
        manifest = _parse(self._read(fmt.MANIFEST) or b"", self.path, fmt.MANIFEST, f"cannot read {fmt.MANIFEST}")
        if not isinstance(manifest, dict):
            raise TraceError(f"trace {self.path} is corrupt: {fmt.MANIFEST} is not a JSON object")
        if manifest.get("format") != fmt.TRACE_FORMAT:
            raise TraceError(f"not a repro-audit trace (format {manifest.get('format')!r}): {self.path}")
        version = manifest.get("schema_version")
        if isinstance(version, bool) or version not in fmt.READABLE_VERSIONS:
            newer = isinstance(version, int) and version > fmt.SCHEMA_VERSION
            hint = "upgrade repro-audit to read it" if newer else "re-record it with this version"
            readable = f"{min(fmt.READABLE_VERSIONS)} to {max(fmt.READABLE_VERSIONS)}"
            raise TraceError(
                f"trace {self.path} has schema version {version!r}, this repro-audit reads versions {readable}: {hint}"
            )
        validate(manifest, schemas.MANIFEST, trace=self.path, where=fmt.MANIFEST)
        return manifest

    def _has(self, relative: str) -> bool:
        if self._files is not None:
            return relative in self._files
        return member_stat(self.path, relative) is not None

    def _member_steps(self, folder: str) -> list[int]:
        if self._files is not None:
            names = [relative for relative in self._files if relative.startswith(folder + "/")]
        else:
            refuse_symlink(self.path, folder)
            found = os.listdir(self.path / folder) if os.path.isdir(self.path / folder) else []
            names = [f"{folder}/{name}" for name in found]
        return sorted(step for step in map(member_step, names) if step is not None)

    def _read(self, relative: str) -> bytes | None:
        """The bytes of a member file, None if absent (a listed file is there: checked at open)."""
        if member_stat(self.path, relative) is None:
            if self._files is not None and relative in self._files:
                raise TraceError(f"trace {self.path} is corrupt: {relative} is missing (its manifest lists it)")
            return None
        try:
            return (self.path / relative).read_bytes()
        except OSError as exc:
            raise TraceError(f"trace {self.path}: cannot read {relative}: {exc.strerror or exc}") from exc

    def _verify(self, relative: str, data: bytes) -> None:
        if self._files is None:
            return
        entry = self._files.get(relative)
        if entry is None:
            raise TraceError(f"trace {self.path} is corrupt: {relative} is not listed in its manifest (added after "
                             "the trace was written)")
        check_digest(self.path, relative, data, entry)

    def _load_optional(self, relative: str, schema: Schema) -> dict[str, Any]:
        return self._load_json(relative, schema) if self._has(relative) else {}

    def _load_json(self, relative: str, schema: Schema) -> dict[str, Any]:
        data = self._read(relative)
        if data is None:
            return {}
        parsed = _parse(data, self.path, relative, f"cannot read {relative}")
        if not isinstance(parsed, dict):
            raise TraceError(f"trace {self.path} is corrupt: {relative} is not a JSON object")
        validate(parsed, schema, trace=self.path, where=relative)
        self._verify(relative, data)
        return parsed

    def _step_record(self, line: bytes, number: int) -> dict[str, Any]:
        where = f"{fmt.STEPS} line {number}"
        record = _parse(line, self.path, where, where)
        if not isinstance(record, dict) or "step" not in record:
            raise TraceError(f"trace {self.path} is corrupt: {where} is not a step")
        validate(record, schemas.STEP, trace=self.path, where=where)
        if isinstance(record.get("health"), dict):
            try:
                record["health"] = complete_health(record, self._module_types)
            except HEALTH_ERRORS as exc:
                raise TraceError(f"trace {self.path} is corrupt: {where}: its health record does not match its "
                                 f"summaries ({type(exc).__name__}: {exc})") from exc
            validate(record["health"], schemas.HEALTH, trace=self.path, where=f"{where}: health")
        return record

    def _check_step_count(self, whole_lines: int, records: list[dict[str, Any]]) -> None:
        """A complete trace holds every step it recorded; a schema-4 trace as many lines as it counted."""
        counted = self.manifest.get("step_records")
        if self._files is not None and whole_lines != counted:
            raise TraceError(f"trace {self.path} is corrupt: {fmt.STEPS} holds {whole_lines} step records, its "
                             f"manifest says {counted}")
        recorded = self.manifest.get("steps_recorded")
        last = int(records[-1]["step"]) if records else 0
        if (self.complete or self._files is not None) and recorded is not None and last != recorded:
            raise TraceError(f"trace {self.path} is corrupt: {fmt.STEPS} ends at step {last}, its manifest says "
                             f"the run recorded {recorded} steps")

    @cached_property
    def _module_types(self) -> dict[str, str]:
        return module_types(self.structure)


def _parse(data: bytes, trace: Path, where: str, prefix: str) -> Any:
    """JSON of a trace file: UTF-8, NaN and Infinity allowed, nested no deeper than Python's json can."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TraceError(f"trace {trace} is corrupt: {prefix}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise TraceError(f"trace {trace} is corrupt: {prefix}: {exc.msg}") from None
    except RecursionError:
        raise TraceError(f"trace {trace} is corrupt: {prefix}: nested too deep") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise TraceError(f"trace {trace} is corrupt: {prefix}: {exc}") from None


class StepValues:
    """Tensor values of one step, read one tensor at a time from safetensors (the header is parsed once).

    With a digest from the manifest, the whole file is hashed once before any of its tensors is trusted.
    """

    def __init__(self, path: Path, *, expected: dict[str, Any] | None = None, trace: Path | None = None) -> None:
        self.path = path
        self._expected = expected
        self._trace = trace or path.parent.parent
        self._handle: Any = None
        self._keys: set[str] | None = None

    def _open(self) -> Any:
        if self._handle is None:
            from safetensors import safe_open

            if self._expected is not None:
                check_file_digest(self._trace, f"{fmt.VALUES_DIR}/{self.path.name}", self._expected)
            try:
                self._handle = safe_open(str(self.path), framework="numpy")
                self._keys = set(self._handle.keys())
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise TraceError(f"cannot read tensor values {self.path}: {exc}") from exc
        return self._handle

    def keys(self) -> list[str]:
        self._open()
        return sorted(self._keys or ())

    def get(self, key: str) -> np.ndarray | None:
        handle = self._open()
        if key not in (self._keys or ()):
            return None
        try:
            return handle.get_tensor(key)
        except Exception as exc:
            raise TraceError(f"cannot read tensor values {self.path}: {key}: {exc}") from exc

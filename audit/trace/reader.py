"""Read a trace lazily and refuse what it cannot read safely.

Nothing is unpickled: traces are JSON, JSON lines and safetensors. Tensor values are opened only when
asked for, so comparing hashes of a large run never reads its values.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from audit.errors import TraceError
from audit.trace import format as fmt
from audit.trace.health_fill import complete_health, module_types


class Trace:
    """One recorded run, opened from its folder."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise TraceError(f"trace not found: {self.path}")
        if not self.path.is_dir() or not (self.path / fmt.MANIFEST).is_file():
            raise TraceError(f"not a repro-audit trace (no {fmt.MANIFEST}): {self.path}")
        self.manifest = self._load_json(fmt.MANIFEST)
        if self.manifest.get("format") != fmt.TRACE_FORMAT:
            raise TraceError(f"not a repro-audit trace (format {self.manifest.get('format')!r}): {self.path}")
        version = self.manifest.get("schema_version")
        if isinstance(version, bool) or version not in fmt.READABLE_VERSIONS:
            newer = isinstance(version, int) and version > fmt.SCHEMA_VERSION
            hint = "upgrade repro-audit to read it" if newer else "re-record it with this version"
            readable = " and ".join(map(str, fmt.READABLE_VERSIONS))
            raise TraceError(
                f"trace {self.path} has schema version {version!r}, this repro-audit reads versions {readable}: {hint}"
            )

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
        return self._load_optional(fmt.ENVIRONMENT)

    @cached_property
    def structure(self) -> dict[str, Any]:
        return self._load_optional(fmt.STRUCTURE)

    @cached_property
    def initialisation(self) -> dict[str, Any]:
        return self._load_optional(fmt.INITIALISATION)

    @cached_property
    def steps(self) -> list[dict[str, Any]]:
        """All step records. A cut last line is dropped only when the trace says it is incomplete."""
        return list(self._iter_steps())

    def step(self, number: int) -> dict[str, Any] | None:
        for record in self.steps:
            if record.get("step") == number:
                return record
        return None

    def graph(self, step: int) -> dict[str, Any] | None:
        """The op-level graph recorded at `step`, if the probes kept one for it."""
        relative = fmt.graph_file(step)
        if not (self.path / relative).exists():
            return None
        return self._load_json(relative)

    def graph_steps(self) -> list[int]:
        folder = self.path / fmt.GRAPHS_DIR
        if not folder.is_dir():
            return []
        return sorted(int(name.stem.split("_")[1]) for name in folder.glob("step_*.json"))

    def values(self, step: int) -> StepValues | None:
        relative = fmt.values_file(step)
        if not (self.path / relative).exists():
            return None
        return StepValues(self.path / relative)

    def log_text(self) -> str:
        log = self.path / fmt.LOG
        return log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""

    def _iter_steps(self) -> Iterator[dict[str, Any]]:
        steps_file = self.path / fmt.STEPS
        if not steps_file.exists():
            return
        with open(steps_file, encoding="utf-8") as handle:
            lines = handle.readlines()
        for number, line in enumerate(lines, start=1):
            last = number == len(lines)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if last and not self.complete:
                    return  # the run died while writing this step
                raise TraceError(f"trace {self.path} is corrupt: {fmt.STEPS} line {number}: {exc.msg}") from exc
            if not isinstance(record, dict) or "step" not in record:
                raise TraceError(f"trace {self.path} is corrupt: {fmt.STEPS} line {number} is not a step")
            if isinstance(record.get("health"), dict):
                try:
                    record["health"] = complete_health(record, self._module_types)
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                    raise TraceError(f"trace {self.path} is corrupt: {fmt.STEPS} line {number}: its health record "
                                     f"does not match its summaries ({type(exc).__name__}: {exc})") from exc
            yield record

    @cached_property
    def _module_types(self) -> dict[str, str]:
        return module_types(self.structure)

    def _load_optional(self, relative: str) -> dict[str, Any]:
        if not (self.path / relative).exists():
            return {}
        return self._load_json(relative)

    def _load_json(self, relative: str) -> dict[str, Any]:
        try:
            data = json.loads((self.path / relative).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TraceError(f"trace {self.path} is corrupt: cannot read {relative}: {exc}") from exc
        if not isinstance(data, dict):
            raise TraceError(f"trace {self.path} is corrupt: {relative} is not a JSON object")
        return data


class StepValues:
    """Tensor values of one step, read one tensor at a time from safetensors (the header is parsed once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None
        self._keys: set[str] | None = None

    def _open(self) -> Any:
        if self._handle is None:
            from safetensors import safe_open

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

"""Write a trace atomically while streaming steps.

Everything goes into `<path>.partial/` first; each step is appended to steps.jsonl and flushed, so a crash
at step k keeps steps before k. `finish` writes the manifest and renames the folder into place; if the
process dies first, the parent runner calls `finalize_partial` to do the same with `complete: false`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from audit.trace import format as fmt
from audit.trace.step_lines import dumps_step


class TraceWriter:
    """The only way probes put data into a trace."""

    def __init__(self, path: str | os.PathLike[str], *, framework: str, config: Mapping[str, Any],
                 label: str) -> None:
        self.final_path = Path(path)
        self.staging = staging_path(self.final_path)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
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
        self._write_text(fmt.MANIFEST, fmt.dumps(self.manifest))
        self._steps = open(self.staging / fmt.STEPS, "a", encoding="utf-8")

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
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()}, str(tmp))
        os.replace(tmp, target)
        return relative

    def append_step(self, record: Mapping[str, Any]) -> None:
        """Stream one step record. Flushed, so a crash or kill right after keeps it (the OS holds what a
        dead process wrote); synced to disk once, in `finish`: an fsync per step cost ~3 ms here."""
        self._steps.write(dumps_step(record) + "\n")
        self._steps.flush()
        self.manifest["steps_recorded"] = int(record["step"])

    def finish(self, *, complete: bool, error: Mapping[str, Any] | None = None) -> Path:
        """Close the trace and move it into place; the final path appears only now."""
        self._steps.flush()
        os.fsync(self._steps.fileno())
        self._steps.close()
        self.manifest["complete"] = complete
        self.manifest["error"] = dict(error) if error else None
        self._write_text(fmt.MANIFEST, fmt.dumps(self.manifest))
        return _move_into_place(self.staging, self.final_path)

    def _write_text(self, relative: str, text: str) -> None:
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)


def staging_path(final_path: Path) -> Path:
    return final_path.with_name(final_path.name + fmt.PARTIAL_SUFFIX)


def finalize_partial(final_path: str | os.PathLike[str], *, error: Mapping[str, Any]) -> Path | None:
    """Turn what a dead run left in `<path>.partial/` into an incomplete, readable trace.

    Called by the parent process after a crash, a kill or a timeout. Returns None if the run died before
    it wrote anything.
    """
    final = Path(final_path)
    staging = staging_path(final)
    manifest_file = staging / fmt.MANIFEST
    if not manifest_file.exists():
        return None
    import json

    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    manifest["steps_recorded"] = _count_complete_steps(staging / fmt.STEPS)
    manifest["complete"] = False
    manifest["error"] = dict(error)
    tmp = manifest_file.with_name(fmt.MANIFEST + ".tmp")
    tmp.write_text(fmt.dumps(manifest), encoding="utf-8")
    os.replace(tmp, manifest_file)
    return _move_into_place(staging, final)


def _count_complete_steps(steps_file: Path) -> int:
    if not steps_file.exists():
        return 0
    import json

    last = 0
    with open(steps_file, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # the last line was cut by the crash
            try:
                last = int(json.loads(line)["step"])
            except (ValueError, KeyError):
                break
    return last


def _move_into_place(staging: Path, final: Path) -> Path:
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    return final

"""The atomic changes between two runs, and a run of A with some of them applied.

Config changes come from deepdiff of the two resolved configs, one per leaf key (a list counts as one value:
applying half of a changed list means nothing). Code changes are the recipe folder's imported modules whose
source hash differs between the two traces, when A and B come from different folders. `label` names the run
and is left out.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepdiff import DeepDiff

from repro_audit.audit.config import RunConfig
from repro_audit.audit.trace import Trace

NOT_SET = "<not set>"
NOT_APPLIED = ("label",)  # names the run; never changes what it computes
COPY_IGNORED = shutil.ignore_patterns("__pycache__", "*.trace", "*.partial", ".git")


@dataclass(frozen=True)
class Change:
    """One atomic change from A to B: a config key (`params.lr`) or a module file of the recipe's folder."""

    kind: str  # "config" or "code"
    name: str
    a: Any
    b: Any

    def describe(self) -> str:
        if self.kind == "code":
            return f"module file {self.name} ({_state(self.a)} in A, {_state(self.b)} in B)"
        return f"{self.name}: {self.a!r} -> {self.b!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "a": self.a, "b": self.b}


def config_changes(config_a: RunConfig, config_b: RunConfig) -> list[Change]:
    data_a, data_b = _comparable(config_a), _comparable(config_b)
    # threshold_to_diff_deeper=0: never report a whole mapping as one change when many of its keys differ.
    tree = DeepDiff(data_a, data_b, view="tree", ignore_nan_inequality=True, threshold_to_diff_deeper=0)
    paths: set[tuple[str, ...]] = set()
    for levels in tree.values():
        for level in levels:
            path = []
            for part in level.path(output_format="list"):
                if not isinstance(part, str):
                    break  # an item of a list: the list is the change
                path.append(part)
            paths.add(tuple(path))
    return [Change("config", ".".join(path), _get(data_a, path), _get(data_b, path)) for path in sorted(paths)]


def code_changes(trace_a: Trace, trace_b: Trace) -> list[Change]:
    """Modules of the recipe's folder (paths relative to it) whose source differs, or that only one run imported."""
    modules_a, modules_b = (_folder_modules(trace) for trace in (trace_a, trace_b))
    changed = []
    for path in sorted(set(modules_a) | set(modules_b)):
        hash_a, hash_b = modules_a.get(path), modules_b.get(path)
        if hash_a != hash_b:
            changed.append(Change("code", path, hash_a or NOT_SET, hash_b or NOT_SET))
    return changed


def apply_changes(config_a: RunConfig, config_b: RunConfig, changes: Iterable[Change], *, scratch: Path,
                  label: str) -> RunConfig:
    """Config A with `changes` applied; with code changes, its recipe folder copied to `scratch` (a folder not
    yet there) with B's version of each changed module file put in. `scratch` should sit beside A's folder:
    a recipe may find its siblings by a path relative to its own file."""
    data = config_a.to_dict()
    code = []
    for change in changes:
        if change.kind == "code":
            code.append(change)
        elif change.b == NOT_SET:
            _delete(data, change.name.split("."))
        else:
            _set(data, change.name.split("."), copy.deepcopy(change.b))
    data["label"] = label
    folder = config_a.config_dir
    if code:
        folder = str(_mixed_folder(config_a, config_b, code, scratch))
    applied = RunConfig.from_dict(data, config_dir=folder, source=config_a.source)
    applied.python = config_a.python
    return applied


def _mixed_folder(config_a: RunConfig, config_b: RunConfig, code: Sequence[Change], scratch: Path) -> Path:
    if not config_a.config_dir or not config_b.config_dir:
        raise ValueError("code changes need both recipe folders")
    target = scratch
    shutil.copytree(config_a.config_dir, target, ignore=COPY_IGNORED)
    for change in code:
        destination = target / change.name
        if change.b == NOT_SET:
            destination.unlink(missing_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(config_b.config_dir) / change.name, destination)
    return target


def _folder_modules(trace: Trace) -> dict[str, str]:
    """The probes store paths under the recipe's folder relative to it; library modules keep absolute paths."""
    found = {}
    for entry in (trace.environment.get("modules") or {}).values():
        path = str((entry or {}).get("path") or "")
        if path and not path.startswith("/") and ":" not in path[:3] and path.endswith(".py"):
            found[path] = str(entry.get("hash"))
    return found


def _comparable(config: RunConfig) -> dict[str, Any]:
    return {key: value for key, value in config.to_dict().items() if key not in NOT_APPLIED}


def _get(data: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return NOT_SET
        data = data[key]
    return data


def _set(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def _delete(data: dict[str, Any], path: Sequence[str]) -> None:
    for key in path[:-1]:
        data = data.get(key) or {}
    data.pop(path[-1], None)


def _state(digest: Any) -> str:
    return "absent" if digest == NOT_SET else f"source {str(digest)[:14]}"

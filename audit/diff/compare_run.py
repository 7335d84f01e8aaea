"""Run-level comparators: environment, code fingerprint and config, the inputs of a run.

A difference here is a candidate root cause: nothing recorded later can change them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepdiff import DeepDiff

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.registry import CategoryResult, comparator
from repro_audit.audit.divergence import Divergence

ENVIRONMENT_SECTIONS = ("python", "platform", "cpu", "framework", "threads", "determinism", "env_vars")
# Config keys that name the run, bound it, or say what the probes keep: none changes what it computes.
CONFIG_IGNORED = ("label", "timeout", "capture")
# repro-audit's own package: it observes the run and never changes what it computes. A user's own `audit`,
# `probes` or `reports` package is the user's code, compared like any other.
OWN_PACKAGES = ("repro_audit", "__main__")
OWN_MAIN = ("audit/worker.py", "audit/cli_main.py", "repro_audit/__main__.py", "pytest/__main__.py",
            "bin/repro-audit", "bin/pytest")


@comparator("environment")
def compare_environment(context: CompareContext) -> CategoryResult:
    env_a, env_b = context.trace_a.environment, context.trace_b.environment
    result = CategoryResult()
    for section in ENVIRONMENT_SECTIONS:
        leaves_a, leaves_b = _leaves(env_a.get(section), section), _leaves(env_b.get(section), section)
        for path in sorted(set(leaves_a) | set(leaves_b)):
            result.compared += 1
            a, b = leaves_a.get(path), leaves_b.get(path)
            if a != b and not _both_nan(a, b):
                result.divergences.append(Divergence(
                    "environment", path, "changed", order=ENVIRONMENT_SECTIONS.index(section),
                    explanation=f"{path} is {a!r} in run A and {b!r} in run B.", evidence={"a": a, "b": b}))
    return result


@comparator("code")
def compare_code(context: CompareContext) -> CategoryResult:
    env_a, env_b = context.trace_a.environment, context.trace_b.environment
    result = CategoryResult()
    packages_a, packages_b = env_a.get("packages") or {}, env_b.get("packages") or {}
    for name in sorted(set(packages_a) | set(packages_b)):
        result.compared += 1
        a, b = packages_a.get(name), packages_b.get(name)
        if a != b:
            kind = "changed" if a and b else ("added" if b else "removed")
            result.divergences.append(Divergence(
                "code", f"package {name}", kind, order=0,
                explanation=f"package {name} is {a or 'not installed'} in run A and {b or 'not installed'} in run B.",
                evidence={"package": name, "a": a, "b": b}))
    result.compared += _compare_modules(env_a.get("modules") or {}, env_b.get("modules") or {},
                                        packages_a, packages_b, result.divergences)
    result.compared += _compare_local_changes(env_a.get("local_changes") or {}, env_b.get("local_changes") or {},
                                              result.divergences)
    _attach_source_diffs(result.divergences, _sources(env_a), _sources(env_b))
    git_a, git_b = env_a.get("git") or {}, env_b.get("git") or {}
    for key in ("commit", "dirty"):
        result.compared += 1
        if git_a.get(key) != git_b.get(key):
            result.divergences.append(Divergence(
                "code", f"git {key}", "changed", order=2,
                explanation=f"the recipe's repository has git {key} {git_a.get(key)!r} in run A and "
                            f"{git_b.get(key)!r} in run B.",
                evidence={"a": git_a.get(key), "b": git_b.get(key), "root": git_b.get("root") or git_a.get("root")}))
    return result


def _compare_local_changes(changes_a: dict[str, Any], changes_b: dict[str, Any], found: list[Divergence]) -> int:
    """Installed packages edited after their install (files that differ from pip's RECORD), or editable
    installs at another commit or dirty state, in one run and not the other."""
    compared = 0
    for name in sorted(set(changes_a) | set(changes_b)):
        compared += 1
        a, b = changes_a.get(name) or {}, changes_b.get(name) or {}
        modified_a, modified_b = a.get("modified") or [], b.get("modified") or []
        git_a, git_b = (a.get("editable") or {}).get("git") or {}, (b.get("editable") or {}).get("git") or {}
        if modified_a == modified_b and git_a == git_b:
            continue
        version = b.get("version") or a.get("version")
        parts = []
        for run, files, other in (("B", modified_b, modified_a), ("A", modified_a, modified_b)):
            only = [f for f in files if f not in other]
            if only:
                parts.append(f"run {run} used {name} {version} with local changes to {', '.join(only[:4])}"
                             f"{' and more' if len(only) > 4 else ''} (installed files that differ from what pip "
                             f"installed)")
        if git_a != git_b:
            parts.append(f"{name} is an editable install at git {_git_text(git_a)} in run A and {_git_text(git_b)} "
                         f"in run B")
        found.append(Divergence(
            "code", f"local changes {name}", "changed", order=0, explanation="; ".join(parts) + ".",
            evidence={"package": name, "version": version, "modified": {"a": modified_a, "b": modified_b},
                      "git": {"a": git_a or None, "b": git_b or None}}))
    return compared


def _git_text(git: dict[str, Any]) -> str:
    if not git:
        return "(none)"
    return f"{str(git.get('commit'))[:10]}{' with uncommitted changes' if git.get('dirty') else ''}"


MAX_DIFF_LINES = 60  # lines of a module's unified diff kept in its evidence


def _sources(env: dict[str, Any]) -> dict[str, str | _OnDisk]:
    """The sources a run kept, and, for a module it did not keep, its file if it is still on this machine
    (a run in another virtual environment of the same machine): read only when a diff needs it."""
    sources: dict[str, str | _OnDisk] = dict(env.get("sources") or {})
    for name, entry in (env.get("modules") or {}).items():
        path = Path(str(entry.get("path") or ""))
        if name not in sources and path.is_absolute():
            sources[name] = _OnDisk(path, entry.get("hash"))
    return sources


@dataclass
class _OnDisk:
    """A module file a run hashed: its text counts only while it still has that content."""

    path: Path
    digest: Any

    def text(self) -> str | None:
        from repro_audit.probes.common.hashing import hash_bytes

        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        return data.decode("utf-8", "replace") if hash_bytes(data) == self.digest else None


def _attach_source_diffs(found: list[Divergence], sources_a: dict[str, str | _OnDisk],
                         sources_b: dict[str, str | _OnDisk]) -> None:
    """The changed lines of each changed module whose source both runs kept (the user's modules, modified
    installed files), as a unified diff in its evidence."""
    import difflib

    for divergence in found:
        module = divergence.evidence.get("module")
        if divergence.kind != "changed" or module not in sources_a or module not in sources_b:
            continue
        text_a, text_b = (_text(sources[module]) for sources in (sources_a, sources_b))
        if text_a is None or text_b is None:
            continue
        lines = list(difflib.unified_diff(text_a.splitlines(), text_b.splitlines(),
                                          f"run A: {module}", f"run B: {module}", lineterm="", n=2))
        changed = sum(1 for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---")))
        divergence.evidence["diff"] = "\n".join(lines[:MAX_DIFF_LINES]) + (
            f"\n... {len(lines) - MAX_DIFF_LINES} more lines" if len(lines) > MAX_DIFF_LINES else "")
        divergence.evidence["changed_lines"] = changed
        divergence.explanation = divergence.explanation.rstrip(".") + f": {changed} changed lines."


def _text(source: str | _OnDisk) -> str | None:
    return source.text() if isinstance(source, _OnDisk) else source


def _compare_modules(modules_a: dict[str, Any], modules_b: dict[str, Any], packages_a: dict[str, Any],
                     packages_b: dict[str, Any], found: list[Divergence]) -> int:
    """Imported modules whose source differs; modules only one run imported matter only if they are the user's."""
    compared = 0
    for name in sorted(set(modules_a) | set(modules_b)):
        if name.split(".")[0] in OWN_PACKAGES and not (name == "__main__" and _users_script(modules_a, modules_b)):
            continue
        a, b = modules_a.get(name), modules_b.get(name)
        if a and b:
            compared += 1
            if a.get("hash") != b.get("hash"):
                found.append(_module_changed(name, a, b, packages_a, packages_b))
        elif _is_user_module(a or b):
            compared += 1
            kind = "added" if b else "removed"
            where = "run B" if b else "run A"
            found.append(Divergence(
                "code", f"module {name}", kind, order=1,
                explanation=f"only {where} imported module {name} ({(a or b or {}).get('path')}).",
                evidence={"module": name, "path": (a or b or {}).get("path")}))
    return compared


def _module_changed(name: str, a: dict[str, Any], b: dict[str, Any], packages_a: dict[str, Any],
                    packages_b: dict[str, Any]) -> Divergence:
    top = name.split(".")[0]
    version_a, version_b = _package_version(top, packages_a), _package_version(top, packages_b)
    evidence = {"module": name, "path": {"a": a.get("path"), "b": b.get("path")},
                "hash": {"a": a.get("hash"), "b": b.get("hash")}}
    if version_a and version_a == version_b:
        evidence["package_version"] = version_a
        detail = f" although {top} is version {version_a} in both runs (local source changes)"
    else:
        detail = ""
    return Divergence("code", f"module {name}", "changed", order=1, evidence=evidence,
                      explanation=f"module {name} ({b.get('path')}) has other source in run B{detail}.")


def _package_version(top_module: str, packages: dict[str, Any]) -> str | None:
    for candidate in (top_module, top_module.replace("_", "-"), top_module.replace("_", "-") + "-cpu"):
        if candidate in packages:
            return str(packages[candidate])
    return None


def _users_script(modules_a: dict[str, Any], modules_b: dict[str, Any]) -> bool:
    """`__main__` is repro-audit's worker in a recorded config and the user's own script in attach mode."""
    paths = [str((modules.get("__main__") or {}).get("path") or "") for modules in (modules_a, modules_b)]
    return not any(path.replace("\\", "/").endswith(OWN_MAIN) for path in paths if path)


def _is_user_module(entry: dict[str, Any] | None) -> bool:
    """The probes store paths under the recipe's folder relative to it; library modules keep absolute paths."""
    path = str((entry or {}).get("path") or "")
    return bool(path) and not path.startswith("/") and ":" not in path[:3]


@comparator("config")
def compare_config(context: CompareContext) -> CategoryResult:
    config_a = {k: v for k, v in context.trace_a.config.items() if k not in CONFIG_IGNORED}
    config_b = {k: v for k, v in context.trace_b.config.items() if k not in CONFIG_IGNORED}
    result = CategoryResult(compared=len(set(_leaves(config_a, "")) | set(_leaves(config_b, ""))) or 1)
    tree = DeepDiff(config_a, config_b, view="tree", ignore_nan_inequality=True)
    for report_type, levels in sorted(tree.items()):
        for level in levels:
            path = ".".join(str(part) for part in level.path(output_format="list"))
            a = None if _absent(level.t1) else level.t1
            b = None if _absent(level.t2) else level.t2
            kind = "added" if "added" in report_type else "removed" if "removed" in report_type else "changed"
            result.divergences.append(Divergence(
                "config", path, kind, evidence={"a": a, "b": b, "key": path},
                explanation=f"config key {path} is {_shown(a, level.t1)} in run A and {_shown(b, level.t2)} in run B."))
    result.divergences.sort(key=lambda divergence: divergence.name)
    for index, divergence in enumerate(result.divergences):
        divergence.order = index
    return result


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            leaves.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    return {prefix: value}


def _absent(value: Any) -> bool:
    return type(value).__name__ == "NotPresent"


def _shown(value: Any, raw: Any) -> str:
    return "not set" if _absent(raw) else repr(value)


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)

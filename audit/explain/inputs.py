"""Causes 1 and 2: the runs ran other code, in another environment, or with another config."""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence
from repro_audit.audit.explain.finding import Claims, Finding

MAX_NAMED = 4  # items named in one sentence; the evidence lists them all


def code_change(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    found = claims.free(d for d in divergences if d.category == "code")
    if not found or (_imports_only(found) and any(d.category == "config" for d in divergences)):
        return []  # another recipe imports other modules: that follows from the config change
    local = [d for d in found if d.name.startswith("local changes ")]
    packages = [d for d in found if d.name.startswith("package ")]
    modules = [d for d in found if d.name.startswith("module ")]
    parts = [d.explanation.rstrip(".") for d in local]  # the seed's real cause: say it first, in words
    if packages:
        parts.append("package versions differ: " + _named(
            f"{d.evidence.get('package')} {d.evidence.get('a') or '(none)'} -> {d.evidence.get('b') or '(none)'}"
            for d in packages))
    changed = [d for d in modules if d.kind == "changed"]
    if changed:
        parts.append("imported modules have other source: " + _named(_module_text(d) for d in changed))
    others = [d for d in found if d not in packages and d not in changed and d not in local]
    if others and not parts:
        parts.append(others[0].explanation.rstrip("."))
    root = _summary("code", "code change", "code_change",
                    f"Run B runs other code: {'; '.join(parts)}.",
                    {"packages": {d.evidence.get("package"): {"a": d.evidence.get("a"), "b": d.evidence.get("b")}
                                  for d in packages},
                     "modules": [_module_evidence(d) for d in modules]})
    return [Finding(root, found)]


def environment_change(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    found = claims.free(d for d in divergences if d.category == "environment")
    if not found:
        return []
    text = _named(f"{d.name} {d.evidence.get('a')!r} -> {d.evidence.get('b')!r}" for d in found)
    root = _summary("environment", "environment change", "environment_change",
                    f"The runs ran in other environments: {text}.",
                    {d.name: {"a": d.evidence.get("a"), "b": d.evidence.get("b")} for d in found})
    return [Finding(root, found)]


def config_change(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    found = claims.free(d for d in divergences if d.category == "config")
    if not found:
        return []
    text = _named(f"{d.name} is {_value(d, 'a')} in run A and {_value(d, 'b')} in run B" for d in found)
    keys = "1 key" if len(found) == 1 else f"{len(found)} keys"
    root = _summary("config", "config change", "config_change", f"The configs differ in {keys}: {text}.",
                    {d.name: {"a": d.evidence.get("a"), "b": d.evidence.get("b")} for d in found})
    imports = [d for d in claims.free(divergences) if d.category == "code" and d.kind in ("added", "removed")]
    return [Finding(root, found + imports)]


def _imports_only(found: list[Divergence]) -> bool:
    return all(d.kind in ("added", "removed") and d.name.startswith("module ") for d in found)


def _summary(category: str, name: str, cause: str, explanation: str, evidence: dict[str, Any]) -> Divergence:
    # A summary over the input's own divergences, which are the items counted.
    return Divergence(category, name, "changed", cause=cause, explanation=explanation, evidence=evidence, order=-1,
                      counted=False)


def _named(items: Any) -> str:
    items = list(items)
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def _value(divergence: Divergence, side: str) -> str:
    if divergence.kind == ("added" if side == "a" else "removed"):
        return "not set"
    return repr(divergence.evidence.get(side))


def _module_text(divergence: Divergence) -> str:
    path = (divergence.evidence.get("path") or {}).get("b")
    version = divergence.evidence.get("package_version")
    local = f", same version {version}: local changes" if version else ""
    return f"{divergence.evidence.get('module')} ({path}{local})"


def _module_evidence(divergence: Divergence) -> dict[str, Any]:
    return {"module": divergence.evidence.get("module"), "kind": divergence.kind,
            "path": divergence.evidence.get("path"), "package_version": divergence.evidence.get("package_version")}

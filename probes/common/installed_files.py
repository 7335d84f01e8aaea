"""Installed packages whose files are not what was installed: the library with local changes.

pip writes a RECORD for every distribution it installs: each file with its sha256. An imported module file
whose hash no longer matches was edited in place after the install (the seed's real cause: "another RETURNN
version with local changes"). An editable install has no RECORD for its sources: its checkout's git commit
and dirty state stand in. Only the files of imported modules are hashed, and only when their stat data
changed since the last run (stat_cache.py).
"""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache, partial
from itertools import repeat
from pathlib import Path
from typing import Any

from repro_audit.probes.common.distributions import installed_distributions, real_path
from repro_audit.probes.common.environment import git_state
from repro_audit.probes.common.stat_cache import StatCache, shared_cache

MAX_SOURCE_BYTES = 256 * 1024
OWN_CHECKOUT = Path(__file__).resolve().parents[2]
OWN_DISTRIBUTION = "repro-audit"  # a modified file's source is kept in the trace up to this size, for diffs


def local_changes() -> dict[str, dict[str, Any]]:
    """{distribution: {"version", "modified": [file...], "editable": {...} or absent}} for each
    distribution of an imported module whose installed files differ from its RECORD, or that is an editable
    install (with its checkout's git state)."""
    cache = shared_cache()
    found: dict[str, dict[str, Any]] = {}
    for file in _imported_files():
        entry = _recorded(file)
        if entry is None:
            continue
        dist, expected = entry
        if _sha256(cache, file) not in (expected, None):
            found.setdefault(dist.name, {"version": dist.version, "modified": []})["modified"].append(
                _relative(dist, file))
    for editable in _editable_distributions():
        info = found.setdefault(editable["name"], {"version": editable["version"], "modified": []})
        info["editable"] = {"path": editable["path"], "git": git_state(editable["path"])}
    for info in found.values():
        info["modified"].sort()
    return dict(sorted(found.items()))


def modified_sources(changes: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The source of every modified installed file (up to MAX_SOURCE_BYTES each), keyed by module name, so
    a comparison can show the changed lines against the other run's copy."""
    modified = {(name, path) for name, info in changes.items() for path in info.get("modified") or []}
    if not modified:
        return {}
    sources = {}
    for module_name, module in sorted(list(sys.modules.items())):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):
            continue
        resolved = real_path(file)
        entry = _recorded(resolved)
        if entry is None or (entry[0].name, _relative(entry[0], resolved)) not in modified:
            continue
        try:
            sources[module_name] = Path(file).read_bytes()[:MAX_SOURCE_BYTES].decode("utf-8", "replace")
        except OSError:
            continue
    return sources


class _Dist:
    def __init__(self, name: str, version: str, root: Path) -> None:
        self.name, self.version, self.root = name, version, root


def _recorded(file: str) -> tuple[_Dist, str] | None:
    """(distribution, sha256) of an absolute real path as a RECORD lists it, or None."""
    dists, digests = _recorded_hashes()
    dist = dists.get(file)
    return None if dist is None else (dist, digests[file])


@lru_cache(maxsize=1)
def _recorded_hashes() -> tuple[dict[str, _Dist], dict[str, str]]:
    """Absolute path of every .py file a RECORD lists -> its distribution, and -> its recorded sha256.
    RECORD is read as text (building importlib's PackagePath objects for torch's 10,000 lines costs a
    second), and parsed once per RECORD file's version, in the stat cache."""
    cache = shared_cache()
    dists: dict[str, _Dist] = {}
    digests: dict[str, str] = {}
    for installed in installed_distributions():
        root = real_path(str(installed.dist.locate_file("")))
        info = getattr(installed.dist, "_path", None)  # the .dist-info folder of a distribution on disk
        if isinstance(info, Path):
            entries = cache.record_entries(str(info / "RECORD"), root, partial(_parse_record, root))
        else:
            entries = _parse_record(root, installed.dist.read_text("RECORD") or "")
        if entries:
            dists.update(zip(entries, repeat(_Dist(installed.name, installed.version, Path(root)))))
            digests.update(entries)
    return dists, digests


def _parse_record(root: str, text: str) -> dict[str, str]:
    """{absolute path: sha256} of the .py files a RECORD's text lists, for a distribution installed at root."""
    found = {}
    for line in text.splitlines():
        parts = line.split(",")  # path,sha256=<urlsafe base64>,size (a path with a comma is quoted: skipped)
        if len(parts) != 3 or not parts[0].endswith(".py") or not parts[1].startswith("sha256="):
            continue
        found[os.path.normpath(os.path.join(root, parts[0]))] = parts[1][len("sha256="):]
    return found


def _imported_files() -> list[str]:
    files = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and file.endswith(".py"):
            files.add(real_path(file))
    return sorted(files)


def _editable_distributions() -> list[dict[str, Any]]:
    """Distributions installed in editable mode (PEP 610 direct_url.json) whose modules are imported."""
    imported = {name.split(".")[0].lower() for name in sys.modules}
    found = []
    for installed in installed_distributions():
        dist = installed.dist
        text = dist.read_text("direct_url.json")
        if not text:
            continue
        try:
            direct = json.loads(text)
        except ValueError:
            continue
        if not (direct.get("dir_info") or {}).get("editable"):
            continue
        top = {line.strip().lower() for line in (dist.read_text("top_level.txt") or "").splitlines() if line.strip()}
        name = installed.name
        if top and not top & imported and name.replace("-", "_") not in imported:
            continue
        path = str(direct.get("url", "")).removeprefix("file://")
        if name == OWN_DISTRIBUTION or Path(path).resolve() == OWN_CHECKOUT:
            continue  # repro-audit itself: the tool, not the code under audit
        found.append({"name": name, "version": installed.version, "path": path})
    return found


def _sha256(cache: StatCache, path: str) -> str | None:
    """The file's hash as RECORD writes it; None where it cannot be read (never reported as a change)."""
    digests = cache.file_digests(path)
    return None if digests is None else digests.sha256


def _relative(dist: _Dist, file: str) -> str:
    try:
        return str(Path(file).relative_to(dist.root.resolve()))
    except ValueError:
        return file

"""Installed distributions and real file paths, looked up once per process.

The environment is fingerprinted twice a run (at the start, so a crash keeps one, and at the end, with what
training imported). importlib's `Distribution.metadata` parses each METADATA file with the e-mail parser on
every access, and `Path.resolve` walks every path component with a system call: over ~500 distributions and
~3,000 imported files that was 1-2 s of every run. Names and versions come from the METADATA header instead,
and a file's real path from its folder's, resolved once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import metadata


@dataclass(frozen=True)
class Installed:
    name: str  # lower case, as pip prints it
    version: str
    dist: metadata.Distribution


@lru_cache(maxsize=1)
def installed_distributions() -> tuple[Installed, ...]:
    """Every distribution on sys.path that has a name (a broken install may have none), in path order."""
    found = []
    for dist in metadata.distributions():
        name, version = _name_and_version(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
        if name:
            found.append(Installed(name.lower(), version, dist))
    return tuple(found)


def _name_and_version(text: str) -> tuple[str, str]:
    """`Name` and `Version` from a METADATA header (the header ends at the first blank line)."""
    name = version = ""
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        if key == "Name" and not name:
            name = value.strip()
        elif key == "Version" and not version:
            version = value.strip()
    return name, version


@cache
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def real_path(file: str) -> str:
    """`os.path.realpath(file)`, with the folders' real paths cached; a file that is itself a link is
    resolved in full."""
    if os.path.islink(file):
        return os.path.realpath(file)
    folder, name = os.path.split(os.path.abspath(file))
    return os.path.join(_real_folder(folder), name)

"""What a finished trace holds, so a reader can prove that nothing was cut, lost, added or changed.

The writer lists every member file of the trace in the manifest (`files`: size and xxh3-128 digest) and
counts the lines of steps.jsonl (`step_records`). A reader checks, when it opens the trace, that every
listed file is there and nothing unlisted is; when it reads a JSON file, its size and digest (after it
parsed: a file edited by hand is reported by its first wrong field); a values file, by its size at open
and by its digest before the first of its tensors is returned (a comparison that finds equal hashes
never reads values, and so never pays for them). run.log is no member: the recipe's process writes to it
until it exits, after the manifest is written. Neither is the manifest itself, nor the writer's lock.
xxh3-128 (the hash of tensor summaries) finds any damage; it is no defence against a forger, who can
rewrite the manifest too.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import xxhash

from repro_audit.audit.errors import TraceError
from repro_audit.audit.trace import format as fmt

DIGEST_PREFIX = "xxh3:"
CHUNK = 8 << 20  # bytes hashed at a time: large values files are streamed, never held whole
TOP_MEMBERS = (fmt.ENVIRONMENT, fmt.STRUCTURE, fmt.INITIALISATION, fmt.STEPS)
# Files of graphs/ and values/ that belong to a trace; anything else there (notes.txt, .DS_Store) is not read.
GRAPH_NAME = re.compile(r"step_(\d{5,})\.json")
VALUES_NAME = re.compile(r"step_(\d{5,})\.safetensors")
_MEMBER_DIRS = ((fmt.GRAPHS_DIR, GRAPH_NAME, fmt.graph_file), (fmt.VALUES_DIR, VALUES_NAME, fmt.values_file))


def digest_bytes(data: bytes) -> str:
    return DIGEST_PREFIX + xxhash.xxh3_128_hexdigest(data)


def digest_file(path: Path, *, count_lines: bool = False) -> tuple[int, str, int]:
    """(size, digest, number of newlines if `count_lines`) of one file, read in chunks."""
    hasher = xxhash.xxh3_128()
    size = newlines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            if count_lines:
                newlines += chunk.count(b"\n")
    return size, DIGEST_PREFIX + hasher.hexdigest(), newlines


def member_step(relative: str) -> int | None:
    """The step of a graphs/ or values/ member (`graphs/step_00003.json` -> 3); None for any other name,
    `graphs/step_000003.json` included: the reader would look for step 3 under another name."""
    folder, _, name = relative.partition("/")
    for member_dir, pattern, name_of in _MEMBER_DIRS:
        found = pattern.fullmatch(name) if folder == member_dir else None
        if found and name_of(int(found.group(1))) == relative:
            return int(found.group(1))
    return None


def is_member(relative: str) -> bool:
    return relative in TOP_MEMBERS or member_step(relative) is not None


def member_files(folder: Path) -> list[str]:
    """Relative paths of the member files present in a trace or staging folder, in a stable order."""
    found = [name for name in TOP_MEMBERS if os.path.lexists(folder / name)]
    for member_dir, _, _ in _MEMBER_DIRS:
        if (folder / member_dir).is_dir():
            found += sorted(relative for name in os.listdir(folder / member_dir)
                            if member_step(relative := f"{member_dir}/{name}") is not None)
    return found


def inventory(folder: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """({relative path: {"bytes", "hash"}} of every member file, complete lines of steps.jsonl)."""
    files: dict[str, dict[str, Any]] = {}
    lines = 0
    for relative in member_files(folder):
        size, digest, newlines = digest_file(folder / relative, count_lines=relative == fmt.STEPS)
        files[relative] = {"bytes": size, "hash": digest}
        if relative == fmt.STEPS:
            lines = newlines
    return files, lines


def check_members(trace: Path, files: dict[str, dict[str, Any]]) -> None:
    """At open: every listed file is there as a plain file (values files of their listed size), and no
    member file is unlisted. Cheap: a stat per file."""
    for relative in files:
        if not is_member(relative):
            raise TraceError(f"trace {trace} is corrupt: its manifest lists {relative!r}, which is no trace file")
    for folder in (fmt.GRAPHS_DIR, fmt.VALUES_DIR):
        refuse_symlink(trace, folder)
    for relative, entry in files.items():
        info = member_stat(trace, relative)
        if info is None:
            raise TraceError(f"trace {trace} is corrupt: {relative} is missing (its manifest lists it)")
        if relative.startswith(fmt.VALUES_DIR + "/") and info.st_size != entry["bytes"]:
            raise TraceError(f"trace {trace} is corrupt: {relative} has {info.st_size} bytes, its manifest says "
                             f"{entry['bytes']} (cut or changed after it was written)")
    unlisted = [relative for relative in member_files(trace) if relative not in files]
    if unlisted:
        raise TraceError(f"trace {trace} is corrupt: {unlisted[0]} is not listed in its manifest (added after the "
                         "trace was written)")


def member_stat(trace: Path, relative: str) -> os.stat_result | None:
    """lstat of a member file: None if absent; a symlink or anything but a plain file is refused.

    A trace never holds a link: one would let a trace read files outside its folder.
    """
    try:
        info = os.lstat(trace / relative)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TraceError(f"trace {trace}: cannot read {relative}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise TraceError(f"trace {trace} is corrupt: {relative} is a symbolic link; a trace holds only its own files")
    if not stat.S_ISREG(info.st_mode):
        raise TraceError(f"trace {trace} is corrupt: {relative} is not a file")
    return info


def refuse_symlink(trace: Path, relative: str) -> None:
    if os.path.islink(trace / relative):
        raise TraceError(f"trace {trace} is corrupt: {relative} is a symbolic link; a trace holds only its own files")


def check_digest(trace: Path, relative: str, data: bytes, entry: dict[str, Any]) -> None:
    _compare(trace, relative, len(data), digest_bytes(data), entry)


def check_file_digest(trace: Path, relative: str, entry: dict[str, Any]) -> None:
    """A large file (values) streamed through the hash before its contents are trusted."""
    size, digest, _ = digest_file(trace / relative)
    _compare(trace, relative, size, digest, entry)


def _compare(trace: Path, relative: str, size: int, digest: str, entry: dict[str, Any]) -> None:
    if size != entry["bytes"]:
        raise TraceError(f"trace {trace} is corrupt: {relative} has {size} bytes, its manifest says "
                         f"{entry['bytes']} (cut or changed after it was written)")
    if digest != entry["hash"]:
        raise TraceError(f"trace {trace} is corrupt: {relative} does not match the digest in its manifest "
                         "(changed or damaged after it was written)")

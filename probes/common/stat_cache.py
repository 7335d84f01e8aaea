"""File digests that outlive the process, trusted while the file's stat data is unchanged.

Every recorded run fingerprints its environment: the xxh3 of each imported module's source and the sha256
that pip's RECORD lists for it, after parsing every installed distribution's RECORD. That is the same
thousands of files in every run. As git's index does, a digest is reused only while the file's inode, size,
modification and change times are what they were when it was hashed: the change time cannot be set by a user,
so an edit that restores the size and modification time is still seen. An entry whose file changed within
RACY_SECONDS of being hashed is not stored (it may change again within one tick of the timestamps).

The cache is one JSON file under `$REPRO_AUDIT_CACHE_DIR` (default `$XDG_CACHE_HOME/repro-audit`, else
`~/.cache/repro-audit`); `REPRO_AUDIT_CACHE_DIR=off` (or empty) keeps it in memory only. A missing, corrupt or
foreign file is an empty cache, an unwritable folder is no cache: neither is ever an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from repro_audit.probes.common.hashing import hash_bytes

CACHE_ENV = "REPRO_AUDIT_CACHE_DIR"
OFF_VALUES = ("", "off")
FILE_NAME = "file-digests.json"
VERSION = 1  # bump when what is stored changes (a digest's form, what a RECORD parse keeps)
RACY_SECONDS = 2.0
MAX_FILES = 20_000  # torch and TensorFlow together import some 4,000 source files
MAX_RECORDS = 2_000

Stamp = tuple[int, int, int, int]  # st_ino, st_size, st_mtime_ns, st_ctime_ns


class FileDigests(NamedTuple):
    xxh3: str  # hashing.hash_bytes of the content
    sha256: str  # as pip's RECORD writes it: urlsafe base64 without padding


class StatCache:
    """Digests of files and parsed RECORD files, keyed by path and trusted while their stamp matches."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: in memory only
        self._files: dict[str, list[Any]] = {}
        self._records: dict[str, list[Any]] = {}
        self._touched_files: set[str] = set()
        self._touched_records: set[str] = set()
        self._loaded = False
        self._dirty = False

    def file_digests(self, file: str) -> FileDigests | None:
        """Both digests of `file`'s content; None where it cannot be read."""
        try:
            stamp = _stamp(os.stat(file))
        except OSError:
            return None
        entry = self._entries()[0].get(file)
        if type(entry) is list and len(entry) == 6 and tuple(entry[:4]) == stamp and \
                isinstance(entry[4], str) and isinstance(entry[5], str):
            self._touched_files.add(file)
            return FileDigests(entry[4], entry[5])
        try:
            with open(file, "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        digests = FileDigests(hash_bytes(data), _record_sha256(data))
        if self._storable(file, stamp):
            self._files[file] = [*stamp, *digests]
            self._touched_files.add(file)
            self._dirty = True
        return digests

    def record_entries(self, record: str, root: str, parse: Callable[[str], dict[str, str]]) -> dict[str, str]:
        """`parse(text of the RECORD file)` for a distribution installed at `root`, from the cache while the
        RECORD file is unchanged; {} where it cannot be read."""
        try:
            stamp = _stamp(os.stat(record))
        except OSError:
            return {}
        entry = self._entries()[1].get(record)
        if type(entry) is list and len(entry) == 6 and tuple(entry[:4]) == stamp and entry[4] == root and \
                isinstance(entry[5], dict) and all(type(digest) is str for digest in entry[5].values()):
            self._touched_records.add(record)
            return entry[5]
        try:
            with open(record, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, ValueError):
            return {}
        parsed = parse(text)
        if self._storable(record, stamp):
            self._records[record] = [*stamp, root, parsed]
            self._touched_records.add(record)
            self._dirty = True
        return parsed

    def save(self) -> None:
        """Write what this process added, merged into what other processes wrote meanwhile, atomically."""
        if not self._dirty or self.path is None:
            return
        self._dirty = False
        files, records = _read_cache(self.path)
        files = _merged(files, self._files, self._touched_files, MAX_FILES)
        records = _merged(records, self._records, self._touched_records, MAX_RECORDS)
        _write_atomically(self.path, {"version": VERSION, "files": files, "records": records})

    def _entries(self) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        if not self._loaded:
            self._loaded = True
            if self.path is not None:
                self._files, self._records = _read_cache(self.path)
        return self._files, self._records

    def _storable(self, path: str, stamp: Stamp) -> bool:
        """Not changed within RACY_SECONDS of now, and not changed while it was read."""
        if time.time_ns() - max(stamp[2], stamp[3]) < RACY_SECONDS * 1e9:
            return False
        try:
            return _stamp(os.stat(path)) == stamp
        except OSError:
            return False


_SHARED: dict[tuple[str | None, ...], StatCache] = {}


def shared_cache() -> StatCache:
    """The process's cache, at the place `$REPRO_AUDIT_CACHE_DIR` names now."""
    key = tuple(os.environ.get(name) for name in (CACHE_ENV, "XDG_CACHE_HOME", "HOME"))
    cache = _SHARED.get(key)
    if cache is None:
        cache = _SHARED[key] = StatCache(cache_file())
    return cache


def cache_file() -> Path | None:
    """Where the cache is kept, or None where it is switched off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        if configured.strip().lower() in OFF_VALUES:
            return None
        return Path(configured) / FILE_NAME
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "repro-audit" / FILE_NAME


def _stamp(status: os.stat_result) -> Stamp:
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _record_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def _read_cache(path: Path) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(files, records) as stored; empty for a missing, unreadable, corrupt or other-version file. Entries
    are checked when they are used."""
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return {}, {}
    if not isinstance(stored, dict) or stored.get("version") != VERSION:
        return {}, {}
    files, records = stored.get("files"), stored.get("records")
    return (files if isinstance(files, dict) else {}), (records if isinstance(records, dict) else {})


def _merged(stored: dict[str, list[Any]], ours: dict[str, list[Any]], touched: set[str],
            limit: int) -> dict[str, list[Any]]:
    """Stored entries whose files still exist, then the ones this process used (newest last), the oldest
    dropped past `limit`."""
    kept = {path: entry for path, entry in stored.items() if path not in touched and os.path.exists(path)}
    kept.update((path, ours[path]) for path in sorted(touched) if path in ours)
    if len(kept) > limit:
        kept = dict(list(kept.items())[len(kept) - limit:])
    return kept


def _write_atomically(path: Path, content: dict[str, Any]) -> None:
    """A temporary file beside `path`, then renamed over it: a reader sees the old file or the new one, never
    half of one. Any failure leaves no cache, and no error."""
    temporary = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(content, separators=(",", ":")))  # dumps: C encoder, dump is not
        os.replace(temporary, path)
        temporary = None
    except OSError:
        pass
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass

"""The file-digest cache (probes/common/stat_cache.py): the environment fingerprint is the same whether its
digests come from the cache, are computed anew or the cache is off; an in-place edit that keeps the size and
restores the modification time is still seen; a damaged cache file is ignored and written anew."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from repro_audit.probes.common import stat_cache
from repro_audit.probes.common.distributions import installed_distributions
from repro_audit.probes.common.environment import base_environment
from repro_audit.probes.common.hashing import hash_bytes
from repro_audit.probes.common.installed_files import _recorded_hashes, local_changes

PACKAGE = "statcache_fixture_pkg"
OLD = 1_000_000_000  # seconds: a file last changed this long ago is not "racy"


def _record_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


@pytest.fixture
def new_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """`new_process()`: start over as a new worker process would: no cache in memory, distributions and
    RECORDs not read yet. Called once before the test."""
    def forget() -> None:
        monkeypatch.setattr(stat_cache, "_SHARED", {})
        installed_distributions.cache_clear()
        _recorded_hashes.cache_clear()

    forget()
    yield forget
    installed_distributions.cache_clear()
    _recorded_hashes.cache_clear()


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files the test just wrote count as settled: their change time (which no one can set back) is now,
    and the cache would not store them for RACY_SECONDS."""
    monkeypatch.setattr(stat_cache, "RACY_SECONDS", 0.0)


def _hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of the files the cache hashes (it still hashes them)."""
    calls = [0]
    real = stat_cache.hash_bytes

    def counted(data: bytes) -> str:
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(stat_cache, "hash_bytes", counted)
    return calls


def test_environment_is_the_same_cold_warm_and_without_cache(new_process: Callable[[], None], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    calls = _hash_calls(monkeypatch)
    monkeypatch.setenv(stat_cache.CACHE_ENV, "off")
    disabled = base_environment(recipe_dir=None)
    assert not (tmp_path / stat_cache.FILE_NAME).exists()

    monkeypatch.setenv(stat_cache.CACHE_ENV, str(tmp_path))
    new_process()
    calls[0] = 0
    cold = base_environment(recipe_dir=None)
    cold_calls = calls[0]
    stored = json.loads((tmp_path / stat_cache.FILE_NAME).read_text())
    torch_init = next(path for path in stored["files"] if path.endswith("/torch/__init__.py"))
    assert stored["version"] == stat_cache.VERSION and stored["records"]

    new_process()
    calls[0] = 0
    warm = base_environment(recipe_dir=None)
    assert cold == warm == disabled
    assert warm["modules"]["torch"]["hash"] == hash_bytes(Path(torch_init).read_bytes())
    assert cold_calls > 500 and calls[0] < cold_calls / 20, (cold_calls, calls[0])


@pytest.fixture
def distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_process: Callable[[], None],
                 settled: None) -> Iterator[Path]:
    """An installed distribution with pip's RECORD, imported, its files last changed long ago; its module."""
    site = tmp_path / "site"
    package = site / PACKAGE
    package.mkdir(parents=True)
    sources = {f"{PACKAGE}/__init__.py": b"", f"{PACKAGE}/core.py": b"SCALE = 1.0\n"}
    for relative, data in sources.items():
        (site / relative).write_bytes(data)
    info = site / f"{PACKAGE}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n\n")
    (info / "RECORD").write_text("".join(f"{relative},sha256={_record_sha256(data)},{len(data)}\n"
                                         for relative, data in sources.items()) + f"{info.name}/RECORD,,\n")
    for path in [*site.rglob("*")]:
        os.utime(path, (OLD, OLD))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(stat_cache.CACHE_ENV, str(tmp_path / "cache"))
    __import__(f"{PACKAGE}.core")
    yield package / "core.py"
    for name in (PACKAGE, f"{PACKAGE}.core"):
        sys.modules.pop(name, None)


def _rewrite_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` (as long) in the file, then put its modification time back, until its change
    time (which no one can set) has moved on."""
    before = path.stat()
    path.write_bytes(path.read_bytes().replace(old, new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    while path.stat().st_ctime_ns == before.st_ctime_ns:  # within one tick of the file system's clock
        time.sleep(0.01)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_in_place_edit_with_restored_mtime_is_seen(distribution: Path, new_process: Callable[[], None]) -> None:
    module = f"{PACKAGE}.core"
    first = base_environment(recipe_dir=None)
    assert first["modules"][module]["hash"] == hash_bytes(b"SCALE = 1.0\n")
    assert PACKAGE not in first["local_changes"]
    cache_file = stat_cache.cache_file()
    assert cache_file is not None and str(distribution) in json.loads(cache_file.read_text())["files"]

    _rewrite_in_place(distribution, b"1.0", b"2.0")
    new_process()
    second = base_environment(recipe_dir=None)
    assert second["modules"][module]["hash"] == hash_bytes(b"SCALE = 2.0\n")
    assert second["local_changes"][PACKAGE]["modified"] == [f"{PACKAGE}/core.py"]

    # pip's RECORD rewritten the same way to list the edited file: its cached parse is not trusted either.
    record = next(distribution.parent.parent.glob("*.dist-info")) / "RECORD"
    _rewrite_in_place(record, _record_sha256(b"SCALE = 1.0\n").encode(), _record_sha256(b"SCALE = 2.0\n").encode())
    new_process()
    assert PACKAGE not in local_changes()


def test_a_file_changed_within_the_last_seconds_is_not_stored(tmp_path: Path) -> None:
    fresh, old = tmp_path / "fresh.py", os.path.realpath(json.__file__)  # the standard library's, installed
    fresh.write_text("A = 1\n")
    os.utime(fresh, (OLD, OLD))  # the modification time can be set back, the change time not
    cache = stat_cache.StatCache(tmp_path / "cache" / stat_cache.FILE_NAME)
    assert cache.file_digests(str(fresh)) == (hash_bytes(b"A = 1\n"), _record_sha256(b"A = 1\n"))
    cache.file_digests(old)
    cache.save()
    assert list(json.loads((tmp_path / "cache" / stat_cache.FILE_NAME).read_text())["files"]) == [old]


@pytest.mark.parametrize("damage", [b"", b"\xff\xfe\x00garbage", b'{"version": 1, "files": {"', b"[1, 2]",
                                    b'{"version": 999, "files": {}, "records": {}}',
                                    b'{"version": 1, "files": "nothing", "records": []}',
                                    b'{"version": 1, "files": {"FILE": [1, 2, 3]}, "records": {}}',
                                    b'{"version": 1, "files": {"FILE": ["STAMP", 5, 6]}, "records": {}}'])
def test_damaged_cache_file_is_ignored_and_written_anew(tmp_path: Path, damage: bytes, settled: None) -> None:
    source = tmp_path / "module.py"
    source.write_text("VALUE = 3\n")
    os.utime(source, (OLD, OLD))
    stamp = list(stat_cache._stamp(source.stat()))
    cache_path = tmp_path / "cache" / stat_cache.FILE_NAME
    cache_path.parent.mkdir()
    cache_path.write_bytes(damage.replace(b'"FILE"', json.dumps(str(source)).encode())
                           .replace(b'"STAMP"', json.dumps(stamp)[1:-1].encode()))
    cache = stat_cache.StatCache(cache_path)
    assert cache.file_digests(str(source)) == (hash_bytes(b"VALUE = 3\n"), _record_sha256(b"VALUE = 3\n"))
    cache.save()
    stored = json.loads(cache_path.read_text())
    assert stored["version"] == stat_cache.VERSION
    assert stored["files"][str(source)] == [*stamp, hash_bytes(b"VALUE = 3\n"), _record_sha256(b"VALUE = 3\n")]


def test_unwritable_folder_is_no_cache(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("VALUE = 4\n")
    os.utime(source, (OLD, OLD))
    cache = stat_cache.StatCache(Path("/proc/self/repro-audit") / stat_cache.FILE_NAME)  # even root cannot write
    assert cache.file_digests(str(source)) == (hash_bytes(b"VALUE = 4\n"), _record_sha256(b"VALUE = 4\n"))
    cache.save()
    assert cache.file_digests(str(tmp_path / "missing.py")) is None


def test_two_writers_keep_each_others_entries(tmp_path: Path, settled: None) -> None:
    """Workers saving one after the other merge into the file, and leave no temporary file behind."""
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    for path in (first, second):
        path.write_text(f"NAME = {path.stem!r}\n")
        os.utime(path, (OLD, OLD))
    cache_path = tmp_path / "cache" / stat_cache.FILE_NAME
    one, other = stat_cache.StatCache(cache_path), stat_cache.StatCache(cache_path)
    one.file_digests(str(first))
    other.file_digests(str(second))
    one.save()
    other.save()
    assert sorted(json.loads(cache_path.read_text())["files"]) == [str(first), str(second)]
    assert [path.name for path in cache_path.parent.iterdir()] == [stat_cache.FILE_NAME]


def test_entries_of_deleted_files_are_dropped_and_the_count_is_capped(tmp_path: Path, settled: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = [tmp_path / f"module_{index}.py" for index in range(4)]
    for path in files:
        path.write_text(f"INDEX = {path.stem!r}\n")
    cache_path = tmp_path / "cache" / stat_cache.FILE_NAME

    def save_digests_of(*paths: Path) -> list[str]:
        cache = stat_cache.StatCache(cache_path)
        for path in paths:
            cache.file_digests(str(path))
        cache.save()
        return sorted(json.loads(cache_path.read_text())["files"])

    assert save_digests_of(files[0], files[1]) == [str(files[0]), str(files[1])]
    files[0].unlink()
    assert save_digests_of(files[2]) == [str(files[1]), str(files[2])]
    monkeypatch.setattr(stat_cache, "MAX_FILES", 2)
    assert save_digests_of(files[3]) == [str(files[2]), str(files[3])]  # the oldest, module_1, dropped

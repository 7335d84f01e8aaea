"""The staging folder `<path>.partial/`: one writer at a time, and nothing replaced that is not a trace.

A writer holds an OS lock (`fcntl.flock`) on `<path>.partial/writer.lock` for its whole life, so a second
writer on the same path fails at once instead of deleting the first one's work. The kernel drops the lock
when its process dies, so a staging folder whose lock is free was left by a run that died: a new writer
may clear it, but only if it holds a trace manifest (or nothing at all). A finished trace is moved to
`<path>` only over nothing, an empty folder, or another repro-audit trace, and the final path appears only
once the trace is finished.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from repro_audit.audit.errors import OutputError
from repro_audit.audit.trace import format as fmt

MAX_MANIFEST_BYTES = 64 << 20  # a manifest holds the config; anything larger is not one of ours
POLL_S = 0.05


class StagingLock:
    """The lock on one staging folder; released by `release` or when its process ends."""

    def __init__(self, final: Path, fd: int) -> None:
        self.final = final
        self.staging = staging_path(final)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __del__(self) -> None:
        self.release()


def staging_path(final: Path) -> Path:
    if final.name in ("", ".", ".."):
        raise OutputError(f"the trace path {str(final)!r} names no folder: give a path such as run.trace")
    return final.with_name(final.name + fmt.PARTIAL_SUFFIX)


def claim_staging(final: Path) -> StagingLock:
    """Create and lock `<final>.partial/`, or lock and clear the one a dead writer left there."""
    staging = staging_path(final)
    for _ in range(3):  # again if the folder vanished between two steps (its writer finished)
        try:
            staging.mkdir(parents=True)
            fresh = True
        except FileExistsError:
            fresh = False
        except OSError as exc:
            raise output_error(final, exc) from exc
        _refuse_non_folder(staging, final)
        lock = lock_staging(final, wait=0.0)
        if lock is None:
            continue
        if not fresh:
            _clear_stale(staging, final, lock)
        return lock
    raise OutputError(f"cannot write the trace to {final}: its staging folder {staging} keeps changing")


def lock_staging(final: Path, *, wait: float) -> StagingLock | None:
    """Lock an existing staging folder, waiting up to `wait` seconds for another holder to let go.

    None if the folder is gone (its writer finished); OutputError if another process keeps the lock.
    """
    staging = staging_path(final)
    deadline = time.monotonic() + wait
    for _ in range(100):  # a held lock waits for the deadline; a lock file that moved away is opened again
        try:
            fd = os.open(staging / fmt.LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise output_error(final, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise OutputError(f"trace path {final} is being written by another process (pid {holder})") from None
            time.sleep(POLL_S)
            continue
        if _still_there(fd, staging / fmt.LOCK):
            _write_pid(fd)
            return StagingLock(final, fd)
        os.close(fd)  # we locked the file of a folder that moved away meanwhile
        if not staging.is_dir():
            return None
    raise OutputError(f"cannot lock the staging folder {staging} of the trace {final}: it keeps changing")


def check_replaceable(final: Path) -> None:
    """Refuse a final path that holds something a finished trace must not replace."""
    try:
        info = os.lstat(final)
        if stat.S_ISDIR(info.st_mode) and not os.listdir(final):
            return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise output_error(final, exc) from exc
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"refusing to write the trace to {final}: it is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"refusing to write the trace to {final}: it is a file, not a repro-audit trace")
    if not is_trace(final):
        raise OutputError(f"refusing to write the trace to {final}: it is a folder that is not a repro-audit trace")
    if os.path.exists(final / fmt.LOCK) and lock_held(final / fmt.LOCK):
        raise OutputError(f"refusing to write the trace to {final}: another process is writing it")


def is_trace(folder: Path) -> bool:
    """A folder whose manifest.json says it is a repro-audit trace (complete, incomplete or staged)."""
    manifest = folder / fmt.MANIFEST
    try:
        info = os.lstat(manifest)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            return False
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == fmt.TRACE_FORMAT


def lock_held(lock_file: Path) -> bool:
    """Whether some process holds the lock of this lock file now."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def move_into_place(lock: StagingLock) -> Path:
    """Rename the locked staging folder to the final path; an old trace there is replaced."""
    final, staging = lock.final, lock.staging
    check_replaceable(final)
    try:
        if os.path.lexists(final) and os.listdir(final):
            # No rename swaps two folders portably: move the old trace aside, the new one in, then delete.
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.replaced-", dir=final.parent))
            os.replace(final, aside)
            os.replace(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, final)
        (final / fmt.LOCK).unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(final, exc) from exc
    return final


def output_error(final: Path, exc: OSError) -> OutputError:
    """One line naming the trace and what the OS said (`No space left on device`, `Read-only file system`)."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(final) else ""
    return OutputError(f"cannot write the trace {final}: {exc.strerror or exc}{where}")


def _refuse_non_folder(staging: Path, final: Path) -> None:
    if staging.is_symlink() or not staging.is_dir():
        raise OutputError(f"refusing to write the trace to {final}: {staging} exists and is not a staging folder "
                          "of repro-audit: move it away")


def _clear_stale(staging: Path, final: Path, lock: StagingLock) -> None:
    """Empty a staging folder a dead writer left: only if it holds a trace manifest, or nothing else."""
    left = [staging / name for name in os.listdir(staging) if name != fmt.LOCK]
    if left and not is_trace(staging):
        lock.release()
        raise OutputError(f"refusing to write the trace to {final}: {staging} exists and was not left by "
                          "repro-audit (no trace manifest in it): move it away")
    try:
        for path in left:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    except OSError as exc:
        lock.release()
        raise output_error(final, exc) from exc


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _write_pid(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    except OSError:
        pass  # only a message reads it; a full disk is reported by the writes that matter


def _still_there(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

"""Where the CLI may write: trace folders and report files, never over something that is not ours.

Checked before any run starts, so a bad `-o`, `--keep`, `--json` or `--html` costs nothing; written so that a
failure (full disk, read-only or missing folder) leaves an existing report as it was. Refusals are
`OutputError`s: one line, exit code 2.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from repro_audit.audit.errors import OutputError
from repro_audit.audit.trace import format as fmt

STDOUT = "-"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # a manifest holds the config; anything larger is not one of ours


@dataclass(frozen=True)
class ReportTarget:
    """A checked --json or --html destination: stdout, a device or pipe written in place, or a file
    replaced atomically."""

    option: str
    path: str
    kind: str  # "stdout", "device" or "file"

    @property
    def to_stdout(self) -> bool:
        return self.kind == "stdout"


def is_trace_folder(path: Path) -> bool:
    """A folder whose manifest says it is a repro-audit trace (complete, partial or staged)."""
    manifest = path / fmt.MANIFEST
    try:
        if not path.is_dir() or not manifest.is_file():
            return False
        with open(manifest, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            return False
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == fmt.TRACE_FORMAT


def trace_file_name(label: str, *, prefix: str = "") -> str:
    """A trace folder name from a run label: letters, digits, - and _ only, so no label (`../x`, `/etc`)
    can point outside the folder it goes in."""
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)[:60] or "run"
    return f"{prefix}{slug}.trace"


def is_ranked_run(folder: Path) -> bool:
    """A run of N ranks this tool wrote (`launch`/`--nproc`): replaced by the next such run, like a trace."""
    from repro_audit.audit.trace.ranks import is_ranked_run as ranked

    return ranked(folder)


def check_trace_destination(path: str | os.PathLike[str], *, option: str,
                            protected: Iterable[Path] = ()) -> Path:
    """Refuse a trace destination that would replace or nest in something that is not a trace we wrote (an
    empty folder is fine: nothing is lost)."""
    if str(path) == "":
        raise OutputError(f"{option}: the path is empty")
    target = Path(path)
    _refuse_protected(target, option=option, protected=protected)
    for candidate, what in ((target, "it"), (_staging(target), f"its staging folder {_staging(target)}")):
        if candidate.is_symlink() or (candidate.exists() and not is_trace_folder(candidate)
                                      and not _is_empty_folder(candidate) and not is_ranked_run(candidate)):
            raise OutputError(f"refusing to write the trace to {target}: {what} exists and is not a "
                              "repro-audit trace")
    _refuse_inside_trace(target, option=option)
    _existing_folder(target.parent, option=option, path=target, create_ok=True)
    return target


def check_keep_folder(path: str, *, option: str = "--keep") -> Path:
    """A --keep folder: not empty, not a file, not inside (or itself) a trace."""
    if path == "":
        raise OutputError(f"{option}: the path is empty")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is not a folder")
    if is_trace_folder(folder):
        raise OutputError(f"{option} {folder} is a repro-audit trace: give a folder to put traces in")
    _refuse_inside_trace(folder, option=option)
    _existing_folder(folder.parent, option=option, path=folder, create_ok=True)
    return folder


def check_report_targets(requests: Sequence[tuple[str, str | None]], *,
                         protected: Iterable[Path] = ()) -> list[ReportTarget]:
    """Check every requested report (option, path or None) before anything runs."""
    protected = list(protected)
    targets = [_check_report(option, path, protected) for option, path in requests if path is not None]
    if sum(target.to_stdout for target in targets) > 1:
        raise OutputError("only one of --json and --html can go to stdout")
    files = [os.path.realpath(target.path) for target in targets if target.kind == "file"]
    if len(set(files)) < len(files):
        raise OutputError(f"{' and '.join(target.option for target in targets)} name the same file")
    return targets


def write_report(target: ReportTarget, text: str) -> None:
    """Write a report: to stdout, in place to a device or pipe, or to a temporary file beside the target
    that then replaces it, so a failure never leaves half a report where a whole one was."""
    try:
        if target.to_stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
        elif target.kind == "device":
            with open(target.path, "w", encoding="utf-8") as out:
                out.write(text)
        else:
            _replace_atomically(Path(os.path.realpath(target.path)), text.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {target.option} {target.path}: {exc.strerror or exc}") from exc


def _check_report(option: str, path: str, protected: Sequence[Path]) -> ReportTarget:
    if path == STDOUT:
        return ReportTarget(option, path, "stdout")
    if path == "":
        raise OutputError(f"{option}: the path is empty")
    target = Path(path)
    try:
        info = target.stat()
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as exc:
        raise OutputError(f"cannot write {option} {path}: {exc.strerror or exc}") from exc
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write {option} {path}: it is a folder")
    if info is not None and _is_stdout(info):
        return ReportTarget(option, path, "stdout")
    _refuse_protected(target, option=option, protected=protected)
    _refuse_inside_trace(target, option=option)
    if info is not None and not stat.S_ISREG(info.st_mode):
        return ReportTarget(option, path, "device")  # /dev/null, a named pipe: written in place
    _existing_folder(Path(os.path.realpath(target)).parent, option=option, path=target, create_ok=False)
    return ReportTarget(option, path, "file")


def _is_stdout(info: os.stat_result) -> bool:
    try:
        out = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (CliRunner captures it in memory)
        return False
    return (out.st_dev, out.st_ino) == (info.st_dev, info.st_ino)


def _refuse_protected(target: Path, *, option: str, protected: Iterable[Path]) -> None:
    """An input (config, trace) is never written, written into, or inside a folder we would replace."""
    real = Path(os.path.realpath(target))
    for item in protected:
        guarded = Path(os.path.realpath(item))
        if real == guarded:
            raise OutputError(f"refusing to write {option} {target}: it is the input {item}")
        if guarded in real.parents:
            raise OutputError(f"refusing to write {option} {target}: it is inside the input {item}")
        if real in guarded.parents:
            raise OutputError(f"refusing to write {option} {target}: it holds the input {item}")


def _refuse_inside_trace(target: Path, *, option: str) -> None:
    for folder in Path(os.path.realpath(target)).parents:
        if is_trace_folder(folder):
            raise OutputError(f"refusing to write {option} {target}: it is inside the trace {folder}")


def _existing_folder(folder: Path, *, option: str, path: Path, create_ok: bool) -> None:
    """The folder a destination goes in must be a folder: it exists, or (for trace folders, which the
    runner creates) its nearest existing ancestor is one."""
    probe = folder
    while not probe.exists():
        if not create_ok:
            raise OutputError(f"cannot write {option} {path}: the folder {folder} does not exist")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"cannot write {option} {path}: {probe} is not a folder")


def _is_empty_folder(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def _staging(target: Path) -> Path:
    return target.with_name(target.name + fmt.PARTIAL_SUFFIX)


def _replace_atomically(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # os.open applies the umask to 0o666, as any new file gets (mkstemp would make it 0600); a report that
    # already exists keeps its mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise

"""Interrupts, for real: `repro-audit` in a subprocess on the hang fixture, a signal once its workers hang in
step 2, then: the exit code, one stderr line, no worker left (by pid and by process group), no temporary
folder left, and the partial traces kept where --keep asked.

SIGINT and SIGTERM stop the runs at once (exit 130); after a SIGKILL of repro-audit its workers end on
their own and leave what they recorded in `<trace>.partial/`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HANG = ROOT / "fixtures" / "configs" / "torch" / "cases" / "hang.yaml"
POLL_S = 0.2
PATIENCE_S = 900  # how long a busy machine may take to start the workers and run step 1; never hit otherwise
# SIGINT as an interactive shell delivers it: a child started in the background of a script may inherit it
# ignored, and repro-audit leaves an ignored SIGINT ignored.
CLI = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from repro_audit.audit.cli import main; main()"


class Started:
    """repro-audit running in its own temporary folder, with its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.stdout, self.stderr = tmp_path / "stdout", tmp_path / "stderr"
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=ROOT, env=env,
                                            stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def workers_in_step_2(self, count: int) -> list[int]:
        """Wait until `count` workers of this process have recorded step 1 (the hang is in step 2)."""
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.stderr.read_text()
            workers = _workers_of(self.process.pid)
            if len(workers) == count and all(_recorded_a_step(trace) for trace in workers.values()):
                return sorted(workers)
            time.sleep(POLL_S)
        pytest.fail(f"the workers did not reach step 2 in {PATIENCE_S} s")

    def end(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=PATIENCE_S)

    def leftovers(self) -> list[str]:
        return sorted(path.name for path in self.tmp.iterdir() if path.name.startswith("repro-audit"))


def _workers_of(parent: int) -> dict[int, Path]:
    """Worker pids started by `parent` (by their --parent-pid, which survives a re-parenting) and their
    trace paths."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode("utf-8", "replace") for word in argv]
        if "repro_audit.audit.worker" in words and "--parent-pid" in words and words[words.index("--parent-pid") + 1] == str(parent):
            found[int(entry.name)] = Path(words[words.index("--trace") + 1])
    return found


def _recorded_a_step(trace: Path) -> bool:
    steps = trace.with_name(trace.name + ".partial") / "steps.jsonl"
    try:
        return steps.read_text().count("\n") >= 1
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _group_alive(pgid: int) -> bool:
    """Any live member of the process group (each worker leads its own)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def _assert_no_worker_left(workers: list[int], parent: int) -> None:
    for _ in range(int(PATIENCE_S / POLL_S)):
        if not any(_alive(pid) or _group_alive(pid) for pid in workers) and not _workers_of(parent):
            return
        time.sleep(POLL_S)
    pytest.fail(f"workers {workers} outlived repro-audit")


def _one_line(path: Path) -> str:
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_sigint_stops_diff_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    cli = Started(tmp_path, "diff", str(HANG), str(HANG), "--set-a", "timeout=3600", "--set-b", "timeout=3600", "-q")
    workers = cli.workers_in_step_2(2)
    assert cli.end(signal.SIGINT) == 130
    assert _one_line(cli.stderr) == "repro-audit: interrupted by SIGINT"
    _assert_no_worker_left(workers, cli.process.pid)
    assert cli.leftovers() == []
    assert cli.stdout.read_text() == ""


def test_sigterm_with_keep_keeps_the_partial_traces(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    cli = Started(tmp_path, "check", str(HANG), "--runs", "2", "--set", "timeout=3600", "--keep", str(keep), "-q")
    workers = cli.workers_in_step_2(2)
    assert cli.end(signal.SIGTERM) == 130
    assert _one_line(cli.stderr) == f"repro-audit: interrupted by SIGTERM; partial traces kept in {keep}"
    _assert_no_worker_left(workers, cli.process.pid)
    assert cli.leftovers() == []
    assert sorted(path.name for path in keep.iterdir()) == ["1-hang-run-1.trace", "2-hang-run-2.trace"]
    for trace in keep.iterdir():
        manifest = json.loads((trace / "manifest.json").read_text())
        assert manifest["complete"] is False and manifest["steps_recorded"] == 1
        assert manifest["error"]["kind"] == "interrupted" and "SIGTERM" in manifest["error"]["message"]


def test_sigint_during_record_keeps_the_partial_trace_at_its_path(tmp_path: Path) -> None:
    trace = tmp_path / "hang.trace"
    cli = Started(tmp_path, "record", str(HANG), "-o", str(trace), "--set", "timeout=3600", "-q")
    workers = cli.workers_in_step_2(1)
    assert cli.end(signal.SIGINT) == 130
    assert _one_line(cli.stderr) == f"repro-audit: interrupted by SIGINT; partial traces kept in {trace}"
    _assert_no_worker_left(workers, cli.process.pid)
    assert cli.leftovers() == []
    manifest = json.loads((trace / "manifest.json").read_text())
    assert manifest["error"]["kind"] == "interrupted" and manifest["steps_recorded"] == 1


def test_sigkill_of_repro_audit_takes_its_workers_with_it(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    cli = Started(tmp_path, "diff", str(HANG), str(HANG), "--set-a", "timeout=3600", "--set-b", "timeout=3600",
                  "--keep", str(keep), "-q")
    workers = cli.workers_in_step_2(2)
    assert cli.end(signal.SIGKILL) == -signal.SIGKILL
    _assert_no_worker_left(workers, cli.process.pid)
    assert cli.leftovers() == []  # the config goes to a worker on its stdin: no temporary file to leave
    # Nobody is left to finalise: what the runs recorded stays in their staging folders.
    left = sorted(path.name for path in keep.iterdir())
    assert left == ["1-hang--A-.trace.partial", "2-hang--B-.trace.partial"]
    assert all((keep / name / "steps.jsonl").read_text().count("\n") == 1 for name in left)

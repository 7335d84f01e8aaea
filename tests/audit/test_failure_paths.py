"""How runs and the tool itself fail: an early exit is not a success, nothing a recipe forked outlives its
run, a crash of repro-audit is exit 3 (never a verdict), and every error is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import one_line, run_cli

ROOT = Path(__file__).resolve().parents[2]


def is_gone(pid: int) -> bool:
    """No such process, or only its zombie (dead; waiting for a parent that may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_until_gone(pid: int) -> bool:
    for _ in range(600):  # SIGKILL is immediate; this only absorbs a busy machine
        if is_gone(pid):
            return True
        time.sleep(0.1)
    return False


def test_os_exit_0_in_the_recipe_is_a_failure_not_a_trace(write_config, tmp_path: Path) -> None:
    config = write_config("early", recipe="misbehaving:build_exiting", steps=4, params={"at": 2, "code": 0})
    trace = tmp_path / "early.trace"
    code, stdout, stderr = run_cli("record", str(config), "-o", str(trace), "-q")
    assert code == 2
    line = one_line(stderr)
    assert "the run's process exited with code 0 before finishing step 2" in line
    assert f"partial trace kept at {trace}" in line
    manifest = json.loads((trace / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["error"]["kind"] == "early_exit"
    assert manifest["steps_recorded"] == 1


def test_a_forked_child_does_not_outlive_its_run(write_config, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    config = write_config("forks", recipe="misbehaving:build_forking", steps=2, params={"pid_file": str(pid_file)})
    code, stdout, stderr = run_cli("record", str(config), "-o", str(tmp_path / "forks.trace"), "-q")
    assert code == 0, stderr
    child = int(pid_file.read_text())
    assert wait_until_gone(child), f"the recipe's child {child} outlived the run"


def test_a_multi_line_recipe_error_is_one_line(write_config, tmp_path: Path) -> None:
    config = write_config("multi", recipe="misbehaving:build_multiline_error", steps=2)
    code, stdout, stderr = run_cli("record", str(config), "-o", str(tmp_path / "multi.trace"), "-q")
    assert code == 2
    line = one_line(stderr)
    assert "first line of the problem second line third line" in line and "\x1b" not in line


def test_an_internal_error_exits_3_with_a_saved_traceback(tmp_path: Path) -> None:
    """A bug of ours (here: the differ raising) must not exit 1, the code that means "diverged"."""
    trace = tmp_path / "x.trace"
    script = ("import repro_audit.audit.diff\n"
              "def broken(*args, **kwargs):\n"
              "    raise RuntimeError('no such category\\nsecond line')\n"
              "repro_audit.audit.diff.compare_traces = broken\n"
              "from repro_audit.audit.cli import main\n"
              "main()\n")
    trace.mkdir()
    (trace / "manifest.json").write_text(json.dumps({"format": "repro-audit-trace", "schema_version": 3,
                                                     "complete": True, "label": "x", "config": {}}))
    (trace / "steps.jsonl").write_text("")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script, "compare", str(trace), str(trace)], capture_output=True,
                         text=True, cwd=ROOT, env=env, check=False)
    assert run.returncode == 3, run.stderr
    line = one_line(run.stderr)
    assert "internal error (a bug in repro-audit, not a verdict): RuntimeError: no such category second line" in line
    saved = Path(line.rsplit("; traceback saved to ", 1)[1])
    assert saved.parent == tmp_path and saved.name.startswith("repro-audit-crash-") and saved.suffix == ".txt"
    assert "Traceback (most recent call last)" in saved.read_text() and "def broken" not in run.stderr


@pytest.mark.parametrize("args, message", [
    ([], "Usage:"),
    (["nope"], "No such command 'nope'"),
    (["record"], "Missing argument 'CONFIG'"),
    (["compare", "a", "b", "--rtol", "x"], "'x' is not a valid float"),
    (["diff", "a.yaml", "--steps", "0"], "0 is not in the range x>=1"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    code, stdout, stderr = run_cli(*args)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    if args:
        one_line(stderr)

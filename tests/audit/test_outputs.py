"""What the CLI writes, and what it must never overwrite: trace folders only over traces (or nothing), reports
atomically with normal permissions, never into an input, and `-` for stdout."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import one_line, run_cli

ROOT = Path(__file__).resolve().parents[2]
HEALTH_WIRED = "step_health" in (ROOT / "probes" / "torch" / "step_recorder.py").read_text(encoding="utf-8") or \
    "step_health" in (ROOT / "probes" / "torch" / "recorder.py").read_text(encoding="utf-8")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with its content hash: what a refused command must leave as it was."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real trace of the tiny recipe and its config."""
    folder = tmp_path_factory.mktemp("outputs")
    shutil.copy(ROOT / "tests" / "recipes" / "tiny_mlp.py", folder / "tiny_mlp.py")
    config = folder / "tiny.yaml"
    config.write_text("recipe: tiny_mlp:build\nseed: 0\nsteps: 2\n", encoding="utf-8")
    trace = folder / "tiny.trace"
    code, _, stderr = run_cli("record", str(config), "-o", str(trace), "-q")
    assert code == 0, stderr
    return {"config": config, "trace": trace, "folder": folder}


# -- item 1: nothing that is not ours is deleted or replaced -----------------------------------------------


def test_record_refuses_a_folder_that_is_not_a_trace(recorded: dict[str, Path], tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "sub" / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    code, _, stderr = run_cli("record", str(recorded["config"]), "-o", str(precious), "-q")
    assert code == 2
    assert f"refusing to write the trace to {precious}: it exists and is not a repro-audit trace" \
        in one_line(stderr)
    assert snapshot(tmp_path) == before


def test_record_refuses_its_own_config_and_a_file(recorded: dict[str, Path]) -> None:
    config = recorded["config"]
    before = config.read_bytes()
    code, _, stderr = run_cli("record", str(config), "-o", str(config), "-q")
    assert code == 2 and f"it is the input {config}" in one_line(stderr)
    assert config.read_bytes() == before
    code, _, stderr = run_cli("record", str(config), "-o", "", "-q")
    assert code == 2 and "-o: the path is empty" in one_line(stderr)
    code, _, stderr = run_cli("record", str(config), "-o", str(recorded["trace"] / "inner.trace"), "-q")
    assert code == 2 and f"it is inside the trace {recorded['trace']}" in one_line(stderr)


def test_reports_never_go_into_an_input(recorded: dict[str, Path]) -> None:
    trace, config = recorded["trace"], recorded["config"]
    before = snapshot(recorded["folder"])
    for option, target in (("--json", trace / "steps.jsonl"), ("--html", trace / "manifest.json"),
                           ("--json", trace / "new.json")):
        code, stdout, stderr = run_cli("compare", str(trace), str(trace), option, str(target))
        assert code == 2 and f"refusing to write {option} {target}" in one_line(stderr) and stdout == ""
    code, _, stderr = run_cli("diff", str(config), str(config), "--json", str(config))
    assert code == 2 and f"it is the input {config}" in one_line(stderr)
    code, _, stderr = run_cli("compare", str(trace), str(trace), "--json", str(trace.parent / "r.x"),
                              "--html", str(trace.parent / "r.x"))
    assert code == 2 and "--json and --html name the same file" in one_line(stderr)
    assert snapshot(recorded["folder"]) == before


@pytest.mark.parametrize("label", ["../escaped", "{tmp}/absolute", "a/../../b"])
def test_health_keeps_its_trace_inside_keep_whatever_the_label(recorded: dict[str, Path], tmp_path: Path,
                                                               label: str) -> None:
    label = label.format(tmp=tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(f"recipe: tiny_mlp:build\nsteps: 1\nlabel: {json.dumps(label)}\n")
    shutil.copy(recorded["folder"] / "tiny_mlp.py", tmp_path / "tiny_mlp.py")
    keep = tmp_path / "keep"
    (tmp_path / "escaped.trace").mkdir()  # what `../escaped` would have replaced
    (tmp_path / "escaped.trace" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, _, stderr = run_cli("health", str(config), "--keep", str(keep), "-q", "--steps", "1")
    assert code in (0, 1), stderr
    kept = list(keep.iterdir())
    assert len(kept) == 1 and (kept[0] / "manifest.json").is_file() and kept[0].name.endswith(".trace")
    assert set(kept[0].name[:-len(".trace")]) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    assert {name: digest for name, digest in snapshot(tmp_path).items() if not name.startswith("keep")} == before
    assert not (tmp_path / "absolute.trace").exists() and not (tmp_path / "b.trace").exists()


# -- item 2: atomic, permissions, stdout -----------------------------------------------------------------


def test_reports_get_normal_permissions(recorded: dict[str, Path], tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        code, _, stderr = run_cli("compare", str(recorded["trace"]), str(recorded["trace"]), "-q",
                                  "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"))
    finally:
        os.umask(old)
    assert code == 0, stderr
    for name in ("r.json", "r.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.html", "r.json"]  # no temporary file left


def test_a_full_disk_leaves_the_old_report_whole(recorded: dict[str, Path], tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 100 bytes fail (EFBIG), as a full disk fails with ENOSPC."""
    report = tmp_path / "r.json"
    report.write_text('{"old": "report"}\n')

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    run = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "compare", str(recorded["trace"]),
                          str(recorded["trace"]), "--json", str(report)], capture_output=True, text=True,
                         cwd=ROOT, preexec_fn=small_files, check=False)
    assert run.returncode == 2
    assert f"cannot write --json {report}: File too large" in one_line(run.stderr)
    assert report.read_text() == '{"old": "report"}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("where, message", [
    ("missing/r.json", "the folder {tmp}/missing does not exist"),
    ("", "--json: the path is empty"),
    (".", "is a directory"),
    ("file/r.json", "{tmp}/file is not a folder"),
])
def test_report_paths_that_cannot_be_written(recorded: dict[str, Path], tmp_path: Path, where: str,
                                             message: str) -> None:
    (tmp_path / "file").write_text("x")
    target = str(tmp_path / where) if where not in ("", ".") else (where if where == "" else str(tmp_path))
    code, stdout, stderr = run_cli("compare", str(recorded["trace"]), str(recorded["trace"]), "--json", target)
    assert code == 2 and message.format(tmp=tmp_path) in one_line(stderr) and stdout == ""


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_json_to_stdout_is_json_only(recorded: dict[str, Path], target: str) -> None:
    run = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "compare", str(recorded["trace"]),
                          str(recorded["trace"]), "--json", target], capture_output=True, text=True, cwd=ROOT,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["identical"] is True
    assert run.stderr == ""


def test_only_one_report_on_stdout(recorded: dict[str, Path]) -> None:
    code, _, stderr = run_cli("compare", str(recorded["trace"]), str(recorded["trace"]), "--json", "-",
                              "--html", "-")
    assert code == 2 and "only one of --json and --html can go to stdout" in one_line(stderr)


# -- item 8: names matplotlib would read as TeX ------------------------------------------------------------


def test_dollar_names_reach_the_html_report_as_text(write_config, tmp_path: Path) -> None:
    config = write_config("dollars", recipe="misbehaving:build_dollar_names", steps=2, label="$\\bad{$")
    html = tmp_path / "r.html"
    code, _, stderr = run_cli("diff", str(config), "--set-b", "params.lr=0.2", "-q", "--html", str(html))
    assert code == 1, stderr
    page = html.read_text()
    assert "$x^2$" in page[page.index("<svg"):]  # a chart title, as text, not typeset
    assert "$\\frac$.weight" in page[page.index("<svg"):]  # a parameter name on an axis


@pytest.mark.skipif(not HEALTH_WIRED, reason="the step recorder does not write `health` yet")
def test_dollar_names_reach_the_health_page_as_text(write_config, tmp_path: Path) -> None:
    config = write_config("dollars", recipe="misbehaving:build_dollar_names", steps=2, label="$\\bad{$")
    html = tmp_path / "h.html"
    code, _, stderr = run_cli("health", str(config), "-q", "--html", str(html))
    assert code in (0, 1), stderr
    assert "$\\frac" in html.read_text()

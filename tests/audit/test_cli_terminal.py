"""The CLI at a terminal and off one: colour, width, progress lines, --help sections, `--ignore health`.

Real traces of the tiny recipe, compared in this process (CliRunner: not a terminal) and in a real process
whose stdout is a pseudo-terminal.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repro_audit.audit.cli_progress import Progress
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "tests" / "recipes"


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two recorded runs of the tiny recipe with other seeds: they differ from initialisation on."""
    folder = tmp_path_factory.mktemp("terminal")
    shutil.copy(RECIPES / "tiny_mlp.py", folder / "tiny_mlp.py")
    (folder / "run.yaml").write_text("recipe: tiny_mlp:build\nseed: 0\nsteps: 2\n", encoding="utf-8")
    code, out, err = run_cli("diff", str(folder / "run.yaml"), "--set-b", "seed=1", "--keep", str(folder / "kept"),
                             "-q")
    assert code == 1, out + err
    kept = sorted((folder / "kept").iterdir())
    return kept[0], kept[1]


class Terminal(io.StringIO):
    """What a terminal would receive: the text written, escapes included."""

    def isatty(self) -> bool:
        return True


def test_piped_report_is_plain_and_at_most_100_columns(traces: tuple[Path, Path]) -> None:
    code, out, _ = run_cli("compare", *map(str, traces))
    assert code == 1 and "\x1b[" not in out
    assert max(len(line) for line in out.splitlines()) <= 100
    code, colored, _ = run_cli("compare", *map(str, traces), "--color")
    assert code == 1 and colored.startswith("\x1b[1;31mDIVERGED\x1b[0m: ")


def test_json_to_stdout_of_a_divergence_is_pure_json(traces: tuple[Path, Path], tmp_path: Path) -> None:
    """`--json -` of runs that differ: stdout is the JSON alone (no report, even with --color), no file `-`."""
    code, out, _ = run_cli("compare", *map(str, traces), "--json", "-", "--color")
    assert code == 1 and "\x1b[" not in out
    result = json.loads(out)
    assert result["identical"] is False and result["mechanisms"] is not None
    assert [result["run_a"]["trace_path"], result["run_b"]["trace_path"]] == [str(trace) for trace in traces]
    assert not (Path.cwd() / "-").exists()


def test_at_a_terminal_colour_width_and_no_color(traces: tuple[Path, Path]) -> None:
    """A real process whose stdout is a pseudo-terminal of 60 columns: coloured and wrapped to 60, unless
    NO_COLOR is set (and --color still wins over NO_COLOR)."""
    def at_terminal(*extra: str, **env: str) -> str:
        leader, follower = os.openpty()
        try:
            run = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "compare", *map(str, traces), *extra],
                                 stdout=follower, stderr=subprocess.PIPE, cwd=ROOT, check=False,
                                 env={**base, "COLUMNS": "60", "TERM": "xterm", **env})
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: everything was read
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(leader)
        assert run.returncode == 1, run.stderr
        return b"".join(chunks).decode().replace("\r\n", "\n")

    base = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "TERM")}
    text = at_terminal()
    assert text.startswith("\x1b[1;31mDIVERGED\x1b[0m: ")
    plain_lines = text.replace("\x1b[1;31m", "").replace("\x1b[1m", "").replace("\x1b[0m", "").splitlines()
    assert max(len(line) for line in plain_lines) <= 60
    assert "\x1b[" not in at_terminal(NO_COLOR="1")
    assert at_terminal("--color", NO_COLOR="1").startswith("\x1b[1;31mDIVERGED")


def test_each_run_has_its_own_live_line_and_stages_are_cleared() -> None:
    terminal = Terminal()
    with Progress(quiet=False, stream=terminal) as progress:
        progress.update("baseline", 1, 2)
        progress.update("variant", 1, 2)
        progress.update("baseline", 2, 2)
        progress.update("variant", 2, 2)
    with Progress(quiet=False, stream=terminal) as progress, progress.stage("comparing baseline with variant"):
        pass
    written = terminal.getvalue()
    # Two lines, one per run, each rewritten in place (cursor up 2 for the first, 1 for the second).
    assert written.startswith("  baseline: step 1/2\x1b[K\n  variant: step 1/2\x1b[K\n")
    assert "\x1b[2A\r  baseline: step 2/2\x1b[K\x1b[2B\r" in written
    assert "\x1b[1A\r  variant: step 2/2\x1b[K\x1b[1B\r" in written
    assert written.endswith("\r  comparing baseline with variant...\x1b[K\r\x1b[K"), "shown, then cleared"


def test_a_log_gets_a_few_lines_per_run_and_no_stages() -> None:
    log = io.StringIO()
    with Progress(quiet=False, stream=log) as progress, progress.stage("comparing"):
        for step in range(1, 1001):
            progress.update("long", step, 1000)
    lines = log.getvalue().splitlines()
    assert lines[0] == "  long: step 1/1000" and lines[-1] == "  long: step 1000/1000" and len(lines) <= 12
    assert "\x1b" not in log.getvalue()
    quiet = io.StringIO()
    with Progress(quiet=True, stream=quiet) as progress:
        progress.update("long", 1, 2)
    assert quiet.getvalue() == ""


def test_help_lists_the_health_thresholds_last_under_their_heading() -> None:
    for command in ("diff", "compare", "check", "verify"):
        code, out, _ = run_cli(command, "--help")
        assert code == 0
        heading = out.index("\nHealth thresholds:\n")
        assert out.index("  --json FILE") < out.index("  --html FILE") < out.index("  -q, --quiet") < heading, command
        assert heading < out.index("--max-grad-norm") and heading < out.index("--memory-min-steps"), command
        assert "--color / --no-color" in out


def test_ignore_health_drops_health_from_the_comparison(traces: tuple[Path, Path], tmp_path: Path) -> None:
    with_health, without = tmp_path / "with.json", tmp_path / "without.json"
    assert run_cli("compare", *map(str, traces), "--json", str(with_health))[0] == 1
    code, out, err = run_cli("compare", *map(str, traces), "--ignore", "health", "--json", str(without))
    assert code == 1, out + err
    assert "health" in json.loads(with_health.read_text())
    result = json.loads(without.read_text())
    assert "health" not in result and "not compared (--ignore): health" in result["notes"]
    assert "\nHealth:\n" not in out
    code, _, err = run_cli("compare", *map(str, traces), "--ignore", "vibes")
    assert code == 2 and len(err.splitlines()) == 1 and "'vibes' is not one of" in err

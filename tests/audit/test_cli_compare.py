"""`diff`, `compare` and `check` end to end: real runs in subprocesses, exit codes like diff(1), outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli

TORCH = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch"


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), standalone_mode=True)
    return result.exit_code, result.output


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def test_baseline_against_baseline_is_identical_exit_0() -> None:
    code, output = run_cli("diff", str(TORCH / "baseline.yaml"), str(TORCH / "baseline.yaml"), "--steps", "2", "-q")
    assert code == 0, output
    assert output.startswith("IDENTICAL: baseline (A) and baseline (B) match bitwise (2 steps compared)")


def test_check_baseline_three_runs_exit_0() -> None:
    code, output = run_cli("check", str(TORCH / "baseline.yaml"), "--runs", "3", "--steps", "2", "-q")
    assert code == 0, output
    assert "IDENTICAL: 3 runs of 'baseline' match bitwise (2 steps each)" in output


def test_zero_entropy_loss_diff_explains_nan_and_writes_json_and_html(tmp_path: Path) -> None:
    json_path, html_path = tmp_path / "result.json", tmp_path / "report.html"
    code, output = run_cli("diff", str(TORCH / "baseline.yaml"), str(TORCH / "zero_entropy_loss.yaml"),
                           "--steps", "1", "-q", "--json", str(json_path), "--html", str(html_path))
    assert code == 1, output
    assert output.startswith("DIVERGED: baseline vs zero_entropy_loss")
    assert "Loss term att_entropy_l0 with weight 0.0 sends NaN/Inf" in " ".join(output.split())  # wrapped
    assert max(len(line) for line in output.splitlines()) <= 100, "piped: 100 columns"
    assert "characters cut" not in output, "the sentences that say why are whole"
    result = json.loads(json_path.read_text(), parse_constant=lambda token: pytest.fail(f"bare {token} in JSON"))
    assert result["identical"] is False
    assert result["first_divergence"]["category"] == "config"
    # Without --keep the traces are removed: nothing points at them.
    assert result["run_a"]["trace_path"] is None and result["run_b"]["trace_path"] is None
    assert set(result["first_divergence"]) >= {"category", "step", "name", "kind", "explanation", "evidence"}
    nan = [d for d in _walk(result["divergences"]) if d["cause"] == "nan_zero_weight_term"]
    assert nan and nan[0]["evidence"]["loss_term"] == "att_entropy_l0" and nan[0]["evidence"]["loss_weight"] == 0.0
    html = html_path.read_text()
    assert "<html" in html and "Loss term att_entropy_l0 with weight 0.0" in html
    assert 'src="http' not in html and 'href="http' not in html  # self-contained: nothing to fetch


def test_seed_override_with_set_b_only(tmp_path: Path) -> None:
    json_path = tmp_path / "seed.json"
    code, output = run_cli("diff", str(TORCH / "baseline.yaml"), "--set-b", "seed=2", "--steps", "1", "-q",
                           "--json", str(json_path))
    assert code == 1, output
    result = json.loads(json_path.read_text())
    assert len(result["divergences"]) == 1
    first = result["first_divergence"]
    assert (first["category"], first["cause"]) == ("config", "config_change")
    assert first["evidence"] == {"seed": {"a": 0, "b": 2}}
    assert "seed is 0 in run A and 2 in run B" in output


def test_check_finds_the_unseeded_shuffle_in_the_data_of_step_1() -> None:
    code, output = run_cli("check", str(TORCH / "cases" / "unseeded_shuffle.yaml"), "--steps", "1", "-q")
    assert code == 1, output
    assert "first divergence at step 1 in data" in output.splitlines()[0]
    assert "Same config, different results" in output
    assert "runs that differ from run 1: unseeded_shuffle run 2" in output


@pytest.mark.parametrize("args, message", [
    (["diff", "nope.yaml"], "give CONFIG_B, or --set-b"),
    (["diff", "nope.yaml", "nope2.yaml"], "config file not found"),
    (["compare", "missing.trace", "other.trace"], "trace not found"),
    (["diff", "--bogus"], "No such option"),
    (["check", str(TORCH / "baseline.yaml"), "--runs", "1"], "--runs"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, output = run_cli(*args)
    assert code == 2
    assert message in _one_line(output)


@pytest.fixture(scope="module")
def tiny_traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A complete and a crashed run of the tiny recipe, recorded through the CLI."""
    folder = tmp_path_factory.mktemp("tiny")
    shutil.copy(Path(__file__).parents[1] / "recipes" / "tiny_mlp.py", folder / "tiny_mlp.py")
    traces = {}
    for name, recipe in (("ok", "tiny_mlp:build"), ("crash", "tiny_mlp:build_crashing")):
        config = folder / f"{name}.yaml"
        config.write_text(f"recipe: {recipe}\nseed: 0\nsteps: 3\n", encoding="utf-8")
        traces[name] = folder / f"{name}.trace"
        code, output = run_cli("record", str(config), "-o", str(traces[name]), "-q")
        assert code == (0 if name == "ok" else 2), output
    return traces


def test_truncated_trace_gives_an_explicit_partial_comparison(tiny_traces: dict[str, Path]) -> None:
    code, output = run_cli("compare", str(tiny_traces["ok"]), str(tiny_traces["crash"]))
    assert code == 1  # the recipes differ (config), and the comparison says it is partial
    assert "PARTIAL" in output
    assert "run B (crash) is incomplete: crash at step 2" in output
    code, output = run_cli("compare", str(tiny_traces["crash"]), str(tiny_traces["crash"]))
    assert code == 2, "identical up to a crash is not identical"
    assert "PARTIAL" in output


def test_newer_schema_and_corrupt_traces_are_refused_with_one_line(tiny_traces: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    newer = tmp_path / "newer.trace"
    shutil.copytree(tiny_traces["ok"], newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(manifest))
    code, output = run_cli("compare", str(tiny_traces["ok"]), str(newer))
    assert code == 2 and "schema version 99" in _one_line(output) and "upgrade repro-audit" in output

    older = tmp_path / "older.trace"  # schema 2 hashed tensors past 64 KiB as one run of bytes
    shutil.copytree(tiny_traces["ok"], older)
    manifest["schema_version"] = 2
    (older / "manifest.json").write_text(json.dumps(manifest))
    code, output = run_cli("compare", str(older), str(tiny_traces["ok"]))
    line = _one_line(output)
    assert code == 2 and "(schema version 2) hashes tensors of more than 64 KiB otherwise" in line
    assert f"re-record {older}" in line
    code, output = run_cli("compare", str(older), str(older))
    assert code == 0, "two traces of one older schema still compare"

    corrupt = tmp_path / "corrupt.trace"
    shutil.copytree(tiny_traces["ok"], corrupt)
    steps = (corrupt / "steps.jsonl").read_text().splitlines()
    (corrupt / "steps.jsonl").write_text("\n".join(steps[:-1] + [steps[-1][: len(steps[-1]) // 2]]) + "\n")
    code, output = run_cli("compare", str(tiny_traces["ok"]), str(corrupt))
    assert code == 2 and "is corrupt" in _one_line(output)


def test_failed_run_keeps_the_other_trace_and_exits_2(tiny_traces: dict[str, Path], tmp_path: Path) -> None:
    folder = tiny_traces["ok"].parent
    keep = tmp_path / "kept"
    code, output = run_cli("diff", str(folder / "ok.yaml"), str(folder / "crash.yaml"), "--keep", str(keep), "-q")
    assert code == 2
    assert "failed at step 2" in output and "partial trace kept" in output
    kept = sorted(path.name for path in keep.iterdir())
    assert kept == ["1-ok.trace", "2-crash.trace"]
    assert json.loads((keep / "1-ok.trace" / "manifest.json").read_text())["complete"] is True


def test_real_process_compare_and_tolerance(tiny_traces: dict[str, Path]) -> None:
    result = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "compare", str(tiny_traces["ok"]),
                             str(tiny_traces["ok"]), "--rtol", "-1"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "tolerances must be >= 0" in result.stderr
    result = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "compare", str(tiny_traces["ok"]),
                             str(tiny_traces["ok"])], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("IDENTICAL")


def _walk(divergences: list[dict]) -> list[dict]:
    found = []
    for divergence in divergences:
        found.append(divergence)
        found.extend(_walk(divergence["children"]))
    return found

"""`repro-audit record` through click and as a real process: one clear line and exit 2 on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), standalone_mode=True)
    return result.exit_code, result.output  # click >= 8.2 mixes stderr into output


def test_record_writes_a_trace(write_config, tmp_path: Path) -> None:
    config = write_config("ok", recipe="tiny_mlp:build", steps=2)
    code, output = run_cli("record", str(config), "-o", str(tmp_path / "ok.trace"), "-q", "--set", "seed=3")
    assert code == 0, output
    assert (tmp_path / "ok.trace" / "manifest.json").exists()


@pytest.mark.parametrize("fields, message", [
    ({"recipe": "no_such_module:build"}, "cannot import recipe module 'no_such_module'"),
    ({"recipe": "tiny_mlp:missing"}, "has no function 'missing'"),
    ({"recipe": "tiny_mlp:build_wrong_return"}, "returned list; expected repro_audit.Recipe"),
    ({"recipe": "tiny_mlp:build_non_scalar_loss"}, "loss term 'ce' must be a scalar tensor"),
    ({"recipe": "tiny_mlp:build", "stepz": 2}, "unknown key 'stepz'"),
    ({"recipe": "tiny_mlp:build", "steps": 50}, "batches ran out after 10 steps"),
])
def test_bad_input_is_one_line_and_exit_2(write_config, tmp_path: Path, fields: dict, message: str) -> None:
    config = write_config("bad", **fields)
    code, output = run_cli("record", str(config), "-o", str(tmp_path / "bad.trace"), "-q")
    assert code == 2
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in output


def test_missing_config_and_unknown_option(tmp_path: Path) -> None:
    code, output = run_cli("record", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "x.trace"))
    assert code == 2 and "config file not found" in output
    code, output = run_cli("record", "--bogus")
    assert code == 2 and "No such option" in output


def test_real_process_help_and_error(tmp_path: Path) -> None:
    help_run = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "record", "--help"], capture_output=True,
                              text=True)
    assert help_run.returncode == 0 and "Example:" in help_run.stdout
    bad = tmp_path / "m.yaml"
    bad.write_text("recipe: [oops\n")
    run = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "record", str(bad), "-o", str(tmp_path / "t")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "malformed config" in run.stderr


def test_record_then_show_names_where_nan_enters(write_config, tmp_path: Path) -> None:
    config = write_config("nan", recipe="tiny_mlp:build_masked_entropy", steps=2, loss_weights={"entropy": 0.0})
    code, output = run_cli("record", str(config), "-o", str(tmp_path / "nan.trace"), "-q")
    assert code == 0, output
    code, output = run_cli("show", str(tmp_path / "nan.trace"))
    assert code == 0
    assert "NaN enters at step 1 in MulBackward0 (aten::mul of aten::_softmax and aten::_log_softmax)" in output
    assert "loss term entropy (weight 0)" in output

"""`repro-audit ops` end to end: a real worker run of each ops fixture, its exit code, text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from repro_audit.audit.cli import cli

OPS_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch" / "ops"


def _ops(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["ops", *args], standalone_mode=True)
    return result.exit_code, result.stdout, result.stderr


def test_drifting_op_named_in_text_and_json(tmp_path: Path) -> None:
    report = tmp_path / "ops.json"
    code, text, _ = _ops(str(OPS_FIXTURES / "drifting_op.yaml"), "--steps", "1", "-q", "--json", str(report))
    assert code == 1
    assert "repro_fixtures::drifting_scale (forward) in block.drift" in text
    assert "ops_recipes.py:" in text and "loss terms: ce, logit_l2" in text
    data = json.loads(report.read_text())
    assert [(f["op"], f["module"], f["steps"]) for f in data["nondeterministic"]] == [
        ("repro_fixtures::drifting_scale", "block.drift", [1])]
    assert data["known_nondeterministic"] == [] and data["device"] == "cpu"
    assert any("repro_fixtures::drifting_scale" in line for line in data["advice"])


def test_deterministic_model_lists_nothing() -> None:
    code, text, _ = _ops(str(OPS_FIXTURES / "deterministic.yaml"), "--steps", "1", "-q", "--json", "-")
    assert code == 0
    data = json.loads(text)
    assert data["nondeterministic"] == [] and data["known_nondeterministic"] == [] and data["advice"] == []


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    code, _, err = _ops(str(tmp_path / "missing.yaml"))
    assert code == 2 and err.count("\n") == 1 and "config file not found" in err


def test_known_op_with_its_deterministic_kernel_selected_is_clean() -> None:
    from repro_audit.audit.ops.report import ops_report

    known = {"op": "aten::index_add_", "device": "cuda", "module": "m", "phase": "forward", "alternative": True,
             "note": "atomic adds", "calls": 1}
    record = {"framework": "torch", "device": "cuda", "steps": 1, "ops_checked": 10, "disagreements": []}
    assert not ops_report({**record, "known": [{**known, "deterministic_algorithms": False}]}, label="x").clean
    assert ops_report({**record, "known": [{**known, "deterministic_algorithms": True}]}, label="x").clean
    raising = {**known, "op": "aten::histc", "alternative": False, "deterministic_algorithms": True}
    assert not ops_report({**record, "known": [raising]}, label="x").clean

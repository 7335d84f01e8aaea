"""The zoom-in of `check`: from the diverging step down to the first op whose output differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli
from repro_audit.audit.divergence import Comparison, Divergence, RunInfo
from repro_audit.audit.ops.zoom import first_diverging_op, zoom_target

OPS_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch" / "ops"


def _line_of(marker: str) -> int:
    lines = (OPS_FIXTURES / "ops_recipes.py").read_text(encoding="utf-8").splitlines()
    return next(number for number, text in enumerate(lines, start=1) if marker in text)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict, str]:
    folder = tmp_path_factory.mktemp("zoom")
    report, page = folder / "check.json", folder / "check.html"
    result = CliRunner().invoke(cli, ["check", str(OPS_FIXTURES / "jitter.yaml"), "--steps", "1", "-q",
                                      "--json", str(report), "--html", str(page)], standalone_mode=True)
    return result.exit_code, result.stdout, json.loads(report.read_text()), page.read_text(encoding="utf-8")


def test_check_zooms_into_the_first_diverging_op(checked: tuple[int, str, dict, str]) -> None:
    code, _, document, _ = checked
    assert code == 1
    zoom = document["zoom"]
    assert (zoom["step"], zoom["module"]) == (1, "block.drift")
    first = zoom["first_op"]
    assert (first["op"], first["phase"], first["reason"]) == ("repro_fixtures::jitter", "forward", "output differs")
    assert first["index"] >= 2  # tanh and mul ran before it in the module and agreed
    assert first["hashes"]["a"] != first["hashes"]["b"]
    top = first["stack"][0]
    assert (Path(top["file"]).name, top["line"]) == ("ops_recipes.py", _line_of("# the jittering line"))
    assert all("/probes/" not in frame["file"] for frame in first["stack"])


def test_text_report_shows_the_zoom_in(checked: tuple[int, str, dict, str]) -> None:
    _, text, _, _ = checked
    flowing = " ".join(text.split())  # the summary is wrapped to the terminal width
    assert "Zoom-in" in text and "repro_fixtures::jitter (forward) in block.drift gave different bits" in flowing
    assert f"ops_recipes.py:{_line_of('# the jittering line')} in forward" in text


def test_html_report_has_the_zoom_in_card(checked: tuple[int, str, dict, str]) -> None:
    """The page shows what the JSON holds: the op, its module, its source line, the other frames folded."""
    _, _, document, page = checked
    card = page[page.index('id="zoom"'):]
    card = card[:card.index('<section')]
    first = document["zoom"]["first_op"]
    top = first["stack"][0]
    assert "repro_fixtures::jitter" in card and "block.drift" in card
    assert f"{top['file']}:{top['line']} in {top['function']}" in card
    assert f"<summary>stack ({len(first['stack'][1:6])} more frames)</summary>" in card
    assert '<a href="#zoom">zoom-in</a>' in page


def _comparison(*divergences: Divergence) -> Comparison:
    run = RunInfo(label="a", trace_path=None, framework="torch", complete=True, steps_recorded=2)
    return Comparison(run_a=run, run_b=run, divergences=list(divergences))


def test_zoom_target_is_the_earliest_innermost_diverging_module() -> None:
    def output(module: str) -> Divergence:
        return Divergence(category="module_outputs", name=module, kind="changed", step=2,
                          evidence={"module": module})

    root = output("")
    root.children = [output("block"), output("block.norm"), output("block.drift"), output("head")]
    order = ["", "embed", "block", "block.linear", "block.drift", "block.norm", "head"]
    assert zoom_target(_comparison(root), order) == (2, "block.drift")
    data = Divergence(category="data", name="batch", kind="changed", step=1)
    assert zoom_target(_comparison(data), order) is None
    config = Divergence(category="config", name="lr", kind="changed")
    assert zoom_target(_comparison(config), order) is None
    # Gradients part while every module output agrees: the whole step, backward included, is hashed.
    gradient = Divergence(category="gradients", name="block.linear.weight", kind="changed", step=3)
    assert zoom_target(_comparison(gradient), order) == (3, None)


def test_first_diverging_op_by_name_hash_and_length() -> None:
    a = [{"index": 0, "op": "aten::mm", "hashes": ["1"]}, {"index": 1, "op": "aten::add", "hashes": ["2"]}]
    assert first_diverging_op(a, a) == (2, None)
    other_hash = [a[0], {**a[1], "hashes": ["3"]}]
    assert first_diverging_op(a, other_hash)[1]["reason"] == "output differs"
    other_op = [a[0], {**a[1], "op": "aten::sub"}]
    assert first_diverging_op(a, other_op)[1]["op_b"] == "aten::sub"
    assert first_diverging_op(a, a[:1])[1]["reason"] == "only in run A"


def test_diff_zooms_in_where_the_first_divergence_is_inside_a_step(tmp_path: Path) -> None:
    config = str(OPS_FIXTURES / "jitter.yaml")
    report = tmp_path / "diff.json"
    result = CliRunner().invoke(cli, ["diff", config, config, "--steps", "1", "-q", "--json", str(report)],
                                standalone_mode=True)
    assert result.exit_code == 1
    zoom = json.loads(report.read_text())["zoom"]
    assert (zoom["module"], zoom["first_op"]["op"]) == ("block.drift", "repro_fixtures::jitter")


class _Folder:
    """Stands in for the trace writer: keeps what record_zoom writes (zoom.json) in memory."""

    def __init__(self) -> None:
        self.files: dict = {}

    def write_json(self, name: str, data: dict) -> None:
        self.files[name] = data


def _zoom_ops(module: str | None) -> list[dict]:
    """One zoom-in run of the fixture whose custom op is exact in forward and jitters in backward, in process."""
    from repro_audit.audit.config import RunConfig
    from repro_audit.probes.torch.zoom_run import record_zoom

    config = RunConfig.from_dict({"recipe": "ops_recipes:build", "steps": 1,
                                  "params": {"drifting": "jitter_backward"}}, config_dir=str(OPS_FIXTURES))
    folder = _Folder()
    record_zoom(config, folder, progress=lambda step: None, zoom={"step": 1, "module": module})  # type: ignore[arg-type]
    return folder.files["zoom.json"]["ops"]


@pytest.mark.parametrize("module", ["block.drift", None], ids=["module", "whole-step"])
def test_zoom_finds_a_divergence_that_first_appears_in_a_backward_op(module: str | None) -> None:
    """Forward outputs agree bitwise; the custom op's backward jitters. The module zoom hashes the module's
    backward ops too, and both zooms name the op with the module and line of the forward op behind it."""
    ops_a, ops_b = _zoom_ops(module), _zoom_ops(module)
    compared, first = first_diverging_op(ops_a, ops_b)
    assert first is not None and first["reason"] == "output differs"
    assert (first["op"], first["phase"], first["module"]) == ("repro_fixtures::jitter", "backward", "block.drift")
    assert "jittered_gradient" in first["node"]
    top = first["stack"][0]
    assert (Path(top["file"]).name, top["line"]) == ("ops_recipes.py", _line_of("# the line whose gradient jitters"))
    forward = [op for op in ops_a[:compared - 1] if op["phase"] == "forward"]
    assert "repro_fixtures::jittered_gradient" in [op["op"] for op in forward]  # it ran, and agreed
    if module is not None:  # only the module's own ops, in both phases
        assert {op["module"] for op in ops_a} == {"block.drift"}
        assert {op["phase"] for op in ops_a} == {"forward", "backward"}

"""`noise`, `diff --seeds` and `bisect` on the command line: a real diff of two tiny configs with bands, the
JSON and HTML it writes, and every refusal as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import one_line, run_cli

BASELINE = "fixtures/configs/torch/baseline.yaml"


def test_diff_with_seeds_exits_1_when_b_leaves_the_band(write_config, tmp_path: Path) -> None:
    config = write_config("tiny", recipe="tiny_mlp:build", steps=2)
    code, stdout, stderr = run_cli("diff", str(config), "--set-b", "params.lr=0.2", "--set-b", "label=fast",
                                   "--seeds", "2", "--json", str(tmp_path / "r.json"), "--html",
                                   str(tmp_path / "r.html"))
    assert code == 1, stderr
    assert stdout.startswith("OUTSIDE: B's parameter distance from its initial values (from step 1)")
    assert "runs done 4/4" in stderr
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["kind"] == "noise" and document["outside"] and document["b"]["label"] == "fast"
    assert [run["seed"] for run in document["a"]["runs"]] == [0, 1]
    assert "<svg" in (tmp_path / "r.html").read_text()


def test_vary_data_with_a_recipe_without_the_hook_is_one_line(write_config) -> None:
    config = write_config("tiny", recipe="tiny_mlp:build", steps=1)
    code, _, stderr = run_cli("noise", str(config), "--seeds", "2", "--vary", "data", "-q")
    assert code == 2
    assert "does not take data_order_seed" in one_line(stderr)


@pytest.mark.parametrize("args, message", [
    (["noise", BASELINE, "--seeds", "1"], "--seeds"),
    (["noise", BASELINE, "--address", "auto"], "--address needs --executor ray"),
    (["noise", BASELINE, "--vary", "order"], "--vary"),
    (["diff", BASELINE, BASELINE, "--vary", "data"], "--vary needs --seeds"),
    (["diff", BASELINE, BASELINE, "--executor", "ray"], "--executor needs --seeds"),
    (["diff", BASELINE, BASELINE, "--seeds", "3", "--verify"], "--seeds compares seed-to-seed bands"),
    (["bisect", BASELINE], "give CONFIG_B"),
    (["bisect", "missing.yaml", BASELINE], "config file not found"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, _, stderr = run_cli(*args)
    assert code == 2 and message in one_line(stderr)


def test_noise_prints_the_band_and_writes_json_to_stdout(write_config) -> None:
    config = write_config("tiny", recipe="tiny_mlp:build", steps=2)
    code, stdout, stderr = run_cli("noise", str(config), "--seeds", "2", "--json", "-")
    assert code == 0, stderr
    document = json.loads(stdout)  # stdout holds the JSON alone
    assert document["kind"] == "noise" and document["b"] is None and document["outside"] is None
    assert document["headline"].startswith("loss of tiny over 2 seeds (vary init) at step 2: median")
    assert [band["metric"] for band in document["a"]["bands"]] == ["total_loss", "loss_terms.ce", "gradient_norm",
                                                                   "distance_from_init", "parameter_distance"]
    assert "runs done 2/2" in stderr

"""`--verify` on real architectures: each named mechanism, neutralised in a re-run of run B, makes it match
run A on every shared number; real worker subprocesses, no session recordings needed (each pair is its own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli
from tests.real_models.conftest import write_config

# name -> (recipe, params, loss_weights), written beside the copied architectures.py
CONFIGS: dict[str, tuple[str, dict[str, Any], dict[str, float]]] = {
    "encoder": ("encoder", {}, {}),
    "encoder_probe": ("encoder", {"probe_branch": True}, {"probe": 0.0}),
    "encoder_data": ("encoder", {"data_seed": 2}, {}),
    "resnet_lr_a": ("resnet", {"max_lr": 0.1}, {}),
    "resnet_lr_b": ("resnet", {"max_lr": 0.2}, {}),
}


def _config(folder: Path, name: str) -> str:
    recipe, params, weights = CONFIGS[name]
    return str(write_config(folder, name, recipe, params, weights))


def _rows(report: Path) -> list[dict[str, Any]]:
    return list(json.loads(report.read_text(encoding="utf-8"))["verification"]["rows"])


@pytest.mark.parametrize(("variant", "cause", "intervention"), [
    # The probe's Linear drew at build and its Dropout draws in training: both shift the shared dropout
    # masks, and one intervention undoes both.
    ("encoder_probe", "random_stream_shift",
     "run B's training starts from run A's generator state after build; probe.0 draws from a private generator"),
    ("encoder_data", "data_change", "run B trains on run A's batches"),
])
def test_diff_verify_proves_the_encoder_mechanism(architecture_folder: Path, tmp_path: Path, variant: str, cause: str,
                                                  intervention: str) -> None:
    report = tmp_path / "r.json"
    code, out, err = run_cli("diff", _config(architecture_folder, "encoder"), _config(architecture_folder, variant),
                             "--verify", "-q", "--json", str(report))
    assert code == 1, out + err
    rows = _rows(report)
    assert not rows[0]["effect"]["equal_on_shared"]
    single = [row for row in rows if row["kind"] == "single"]
    assert [(row["causes"], row["intervention"]) for row in single] == [([cause], intervention)]
    assert single[0]["effect"]["equal_on_shared"], single[0]["summary"]


def test_verify_command_re_records_traces_without_values_and_proves_the_learning_rate(
        architecture_folder: Path, tmp_path: Path) -> None:
    traces = []
    for name in ("resnet_lr_a", "resnet_lr_b"):
        traces.append(str(tmp_path / f"{name}.trace"))
        code, out, err = run_cli("record", _config(architecture_folder, name), "-o", traces[-1], "-q")
        assert code == 0, out + err
    report = tmp_path / "r.json"
    code, out, err = run_cli("verify", *traces, "--config-a", _config(architecture_folder, "resnet_lr_a"),
                             "--config-b", _config(architecture_folder, "resnet_lr_b"), "--json", str(report))
    assert code == 1, out + err
    assert "recording both runs again with values kept" in err
    rows = _rows(report)
    assert [row["intervention"] for row in rows] == ["none (run B as recorded)", "run B uses run A's lr at every step"]
    assert rows[0]["effect"]["parameter_distance"] > 0
    assert rows[1]["effect"]["equal_on_shared"] and rows[1]["effect"]["parameter_distance"] == 0.0

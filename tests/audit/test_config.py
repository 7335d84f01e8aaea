"""Config loading: overrides, validation, and one clear error per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "recipe: m:f\nseed: 1\nparams: {model: {d: 32}}\nloss_weights: {'att_*': 0.0}\n")
    config = load_config(path, overrides=["params.model.d=64", "seed=2", "params.new.deep=[1, 2]"], steps=5)
    assert config.seed == 2 and config.steps == 5
    assert config.params == {"model": {"d": 64}, "new": {"deep": [1, 2]}}
    assert config.weight_for("att_l0_h1") == 0.0 and config.weight_for("ce") == 1.0
    assert config.label == "c" and config.config_dir == str(tmp_path.resolve())


def test_toml(tmp_path: Path) -> None:
    path = write(tmp_path, 'recipe = "m:f"\nsteps = 2\n[loss_weights]\naux = 0.5\n', "c.toml")
    config = load_config(path)
    assert config.steps == 2 and config.weight_for("aux") == 0.5


@pytest.mark.parametrize("text, message", [
    ("recipe: m:f\nstepz: 3\n", "unknown key 'stepz'"),
    ("seed: 1\n", "missing required key 'recipe'"),
    ("recipe: nocolon\n", "recipe must be 'module:function'"),
    ("recipe: m:f\nsteps: 0\n", "steps must be an integer >= 1"),
    ("recipe: m:f\ncapture: {valuez: all}\n", "unknown capture option 'valuez'"),
    ("recipe: m:f\ncapture: {values: some}\n", "capture.values must be one of"),
    ("recipe: m:f\nloss_weights: {a: x}\n", "loss weight of 'a' must be a number"),
    ("recipe: [m:f\n", "malformed config"),
    ("- a\n- b\n", "must be a mapping at the top level"),
])
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(write(tmp_path, text))


def test_missing_file_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path, "recipe: m:f\n")
    with pytest.raises(ConfigError, match="override must be key.path=value"):
        load_config(path, overrides=["seed"])
    with pytest.raises(ConfigError, match="is not a mapping"):
        load_config(path, overrides=["recipe.x=1"])

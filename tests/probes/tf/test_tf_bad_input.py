"""A TF recipe that cannot be recorded: one clear line naming the problem and exit 2, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from repro_audit.audit.cli import cli

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")

RECIPES = Path(__file__).resolve().parent / "recipes"


@pytest.mark.parametrize("recipe, steps, message", [
    ("tf_keras_names:wrong_mode", 1, "extras['mode'] must be one of eager, function, graph, got 'graph-ish'"),
    ("tf_keras_names:list_loss", 1, "the loss function must return a non-empty mapping of named terms, got list"),
    ("tf_keras_names:unbuilt", 1, "the model has no trainable variables after build"),
    ("tf_keras_names:two_batches", 3, "batches ran out after 2 steps (config asks for 3)"),
])
def test_bad_recipe_is_one_line_and_exit_2(tmp_path: Path, recipe: str, steps: int, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"recipe": recipe, "framework": "tensorflow", "steps": steps}))
    (tmp_path / "tf_keras_names.py").write_text((RECIPES / "tf_keras_names.py").read_text())
    result = CliRunner().invoke(cli, ["record", str(config), "-o", str(tmp_path / "bad.trace"), "-q"],
                                standalone_mode=True)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output

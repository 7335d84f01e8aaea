"""Shared helpers: write a config beside a copy of the tiny test recipes, record it for real."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

RECIPES = Path(__file__).parent / "recipes"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "configs"


@pytest.fixture
def write_config(tmp_path: Path) -> Any:
    """Write a YAML config into tmp_path; the runner finds the recipes copied beside it."""
    for recipe in RECIPES.glob("*.py"):
        shutil.copy(recipe, tmp_path / recipe.name)

    def write(name: str = "run", **fields: Any) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(fields), encoding="utf-8")
        return path

    return write

"""Every module of the tool imports on its own, in a fresh interpreter: no import cycle hides behind the
order in which the CLI happens to import things."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The differ and the explanation rules import each other's parts: where a cycle can hide.
# Named as installed: the folders are reached through the links in repro_audit/.
MODULES = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for package in ("audit/diff", "audit/explain")
                 for path in (ROOT / "repro_audit" / package).rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]

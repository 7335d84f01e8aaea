"""A project with its own `audit`, `reports` and `probes` packages, which its recipe imports, records and
compares, through the CLI and through the pytest plugin (issue 21).

repro-audit installs one top-level name, `repro_audit`, so none of its modules can meet the user's. The
user's `probes` is a namespace folder (no __init__.py) on purpose: a regular package of that name anywhere
on the worker's sys.path, as our checkout's probes/ is, would win over it wherever it stands.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterator

import pytest

from repro_audit.audit.trace import Trace

pytest_plugins = ["pytester"]

TRAIN = '''
import torch

import audit.bookkeeping
import probes.thermometer
import reports.quarterly
from repro_audit import Recipe


def build(params):
    hidden = audit.bookkeeping.HIDDEN
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=probes.thermometer.LR)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator))
               for _ in range(2)]

    def loss(model, batch):
        x, y = batch
        return {reports.quarterly.TERM: torch.nn.functional.cross_entropy(model(x), y)}

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)
'''

PROJECT = {
    "audit/__init__.py": '"""The project\'s own audit package."""\n',
    "audit/bookkeeping.py": "HIDDEN = 8\n",
    "reports/__init__.py": "",
    "reports/quarterly.py": 'TERM = "ce"\n',
    "probes/thermometer.py": "LR = 0.1\n",
    "train.py": TRAIN,
    "run.yaml": "recipe: train:build\nseed: 0\nsteps: 2\n",
}

USER_TESTS = '''
import audit.bookkeeping
import probes.thermometer
import reports.quarterly


def test_the_packages_are_the_projects():
    assert (audit.bookkeeping.HIDDEN, probes.thermometer.LR, reports.quarterly.TERM) == (8, 0.1, "ce")


def test_training_is_deterministic(repro_audit):
    repro_audit.assert_deterministic("run.yaml", runs=2, steps=2)
'''

OWN_MODULES = {"audit.bookkeeping": "audit/bookkeeping.py", "probes.thermometer": "probes/thermometer.py",
               "reports.quarterly": "reports/quarterly.py"}


def write_project(folder: Path) -> Path:
    for relative, text in PROJECT.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text, encoding="utf-8")
    return folder


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m repro_audit` run from the project: its packages come first on the CLI's sys.path too."""
    return subprocess.run([sys.executable, "-m", "repro_audit", *args], cwd=project, capture_output=True,
                          text=True, check=False)


def divergences(tree: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for divergence in tree:
        yield divergence
        yield from divergences(divergence.get("children") or [])


def test_cli_records_and_compares_a_project_with_its_own_packages(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    first = cli(project, "record", "run.yaml", "-o", "a.trace", "-q")
    assert first.returncode == 0, first.stderr
    modules = Trace(project / "a.trace").environment["modules"]
    assert {name: modules[name]["path"] for name in OWN_MODULES} == OWN_MODULES

    # The project's `audit` is the project's code: a change in it is found, not skipped as repro-audit's own.
    (project / "audit" / "bookkeeping.py").write_text("HIDDEN = 8  # the same value, other source\n")
    second = cli(project, "record", "run.yaml", "-o", "b.trace", "-q")
    assert second.returncode == 0, second.stderr
    compared = cli(project, "compare", "a.trace", "b.trace", "--json", "comparison.json", "-q")
    assert compared.returncode == 1, compared.stdout + compared.stderr
    found = json.loads((project / "comparison.json").read_text())["divergences"]
    assert [d["name"] for d in divergences(found) if d["name"].startswith("module ")] == \
        ["module audit.bookkeeping"]


def test_pytest_plugin_in_a_project_with_its_own_packages(pytester: pytest.Pytester) -> None:
    # pytester moves HOME; the session's REPRO_AUDIT_CACHE_DIR (tests/conftest.py) keeps the summary kernel.
    write_project(pytester.path)
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_determinism.py").write_text(USER_TESTS, encoding="utf-8")
    installed = any(ep.value == "repro_audit.audit.pytest_plugin" for ep in entry_points(group="pytest11"))
    result = pytester.runpytest_subprocess(*([] if installed else ["-p", "repro_audit.audit.pytest_plugin"]))
    assert result.parseoutcomes().get("passed") == 2, result.stdout.str()

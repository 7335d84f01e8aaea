"""Two environments: a library edited after its install is named, with its changed lines, as the first cause.

Two real virtual environments (made with `python -m venv`, seeing this environment's packages through a
.pth file), each with the same small package installed as pip installs one (its files and a dist-info with
METADATA and a RECORD of sha256 hashes). In the second, a file of it is edited afterwards, as a user patching
an installed RETURNN would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import run_cli

SOURCE = 'SCALE = 1.0\n\n\ndef scaled(x):\n    """The loss scale the recipe uses."""\n    return x * SCALE\n'
RECIPE = '''
import torch
import tinyops
from repro_audit import Recipe


def build(params):
    model = torch.nn.Linear(4, 2)
    batch = torch.linspace(-1, 1, 32).reshape(8, 4)
    return Recipe(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), batches=[batch] * 4,
                  loss=lambda model, x: {"mse": tinyops.scaled(model(x).pow(2).mean())})
'''


def _venv(folder: Path) -> Path:
    """A virtual environment that sees this one's packages, with `tinyops` 1.0 installed; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    package = site / "tinyops"
    package.mkdir()
    (package / "__init__.py").write_text(SOURCE, encoding="utf-8")
    info = site / "tinyops-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyops\nVersion: 1.0\n", encoding="utf-8")
    digest = base64.urlsafe_b64encode(hashlib.sha256(SOURCE.encode()).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"tinyops/__init__.py,sha256={digest},{len(SOURCE)}\n"
                                 "tinyops-1.0.dist-info/METADATA,,\ntinyops-1.0.dist-info/RECORD,,\n", encoding="utf-8")
    return python


@pytest.fixture(scope="module")
def environments(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("environments")
    clean, edited = _venv(folder / "clean"), _venv(folder / "edited")
    patched = edited.parent.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "tinyops" / "__init__.py"
    patched.write_text(SOURCE.replace("SCALE = 1.0", "SCALE = 2.0  # local fix"), encoding="utf-8")
    (folder / "tiny_recipe.py").write_text(RECIPE, encoding="utf-8")
    config = folder / "tiny.yaml"
    config.write_text("recipe: tiny_recipe:build\nsteps: 2\n", encoding="utf-8")
    return clean, edited, config


def test_diff_in_two_environments_names_the_edited_package_and_its_changed_lines(
        environments: tuple[Path, Path, Path], tmp_path: Path) -> None:
    clean, edited, config = environments
    report = tmp_path / "r.json"
    code, out, err = run_cli("diff", str(config), str(config), "--python-a", str(clean), "--python-b", str(edited),
                             "-q", "--json", str(report))
    assert code == 1, out + err
    result = json.loads(report.read_text(encoding="utf-8"))
    root = result["divergences"][0]
    assert (root["category"], root["cause"]) == ("code", "code_change")
    assert root["explanation"].startswith("Run B runs other code: run B used tinyops 1.0 with local changes to "
                                          "tinyops/__init__.py (installed files that differ from what pip installed)")
    module = next(child for child in root["children"] if child["name"] == "module tinyops")
    assert "-SCALE = 1.0" in module["evidence"]["diff"] and "+SCALE = 2.0  # local fix" in module["evidence"]["diff"]
    assert module["evidence"]["changed_lines"] == 2


def test_record_in_an_environment_with_an_edited_package_warns(environments: tuple[Path, Path, Path],
                                                                tmp_path: Path) -> None:
    _, edited, config = environments
    code, out, err = run_cli("record", str(config), "-o", str(tmp_path / "t.trace"), "--python", str(edited), "-q")
    assert code == 0, out + err
    assert ("warning: package tinyops 1.0 has 1 file that differ from what was installed (local changes): "
            "tinyops/__init__.py") in err


def test_an_interpreter_without_the_dependencies_is_one_line(environments: tuple[Path, Path, Path],
                                                              tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    code, _, err = run_cli("record", str(environments[2]), "-o", str(tmp_path / "t.trace"),
                           "--python", str(tmp_path / "bare" / "bin" / "python"))
    assert code == 2 and "cannot run repro-audit's worker: ModuleNotFoundError: No module named 'numpy'" in err


def test_env_prints_the_determinism_settings_and_what_to_fix() -> None:
    code, out, _ = run_cli("env", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["environment"]["framework"]["name"] == "torch"
    assert "deterministic_algorithms" in document["environment"]["determinism"]
    assert any("use_deterministic_algorithms(True) is off" in line for line in document["advice"])
    code, out, _ = run_cli("env")
    assert code == 0 and "determinism: " in out and "to fix:" in out


def test_ref_b_runs_the_config_at_another_commit_and_names_the_changed_helper(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                       capture_output=True)

    git("init", "-q")
    (repo / "helper.py").write_text(SOURCE.replace("SCALE", "FACTOR").replace("x * FACTOR", "x * FACTOR"),
                                    encoding="utf-8")
    (repo / "tiny_recipe.py").write_text(RECIPE.replace("import tinyops", "import helper as tinyops"),
                                         encoding="utf-8")
    (repo / "tiny.yaml").write_text("recipe: tiny_recipe:build\nsteps: 2\n", encoding="utf-8")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    (repo / "helper.py").write_text(SOURCE.replace("SCALE", "FACTOR").replace("FACTOR = 1.0", "FACTOR = 0.5"),
                                    encoding="utf-8")
    git("commit", "-q", "-am", "two")
    report = tmp_path / "r.json"
    code, out, err = run_cli("diff", str(repo / "tiny.yaml"), str(repo / "tiny.yaml"), "--ref-b", "HEAD~1", "-q",
                             "--json", str(report))
    assert code == 1, out + err
    result = json.loads(report.read_text(encoding="utf-8"))
    assert result["run_b"]["label"] == "tiny@HEAD~1"
    root = result["divergences"][0]
    assert root["cause"] == "code_change" and "helper" in root["explanation"]
    helper = next(child for child in root["children"] if child["name"] == "module helper")
    assert "-FACTOR = 0.5" in helper["evidence"]["diff"] and "+FACTOR = 1.0" in helper["evidence"]["diff"]
    assert subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True
                          ).stdout.count("\n") == 1, "the temporary worktree is gone"
    code, _, err = run_cli("diff", str(repo / "tiny.yaml"), "--set-b", "seed=1", "--ref-b", "no-such-commit")
    assert code == 2 and "'no-such-commit' is not a commit of the repository" in err

"""The seed's real cause: a RETURNN with local changes. Two real virtual environments (made with
`python -m venv`, seeing this environment's packages through a .pth file) each hold their own copy of the
installed RETURNN, package and dist-info with pip's RECORD; in the second, files are edited afterwards.
A diff of the same config names the edited RETURNN file first, in words, in both backends."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import run_cli

returnn = pytest.importorskip("returnn", reason="RETURNN is not installed: pip install 'repro-audit[returnn]'")
pytest.importorskip("tree", reason="dm-tree (needed by RETURNN) is not installed: pip install 'repro-audit[returnn]'")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "returnn"
EDITED = {"torch": "returnn/torch/updater.py", "tf": "returnn/tf/layers/basic.py"}


def _venv_with_returnn(folder: Path) -> Path:
    """A virtual environment that sees this one's packages, with its own pip-installed copy of RETURNN; its
    python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    package = Path(returnn.__file__).resolve().parent
    shutil.copytree(package, site / "returnn", ignore=shutil.ignore_patterns("__pycache__"))
    info = next(package.parent.glob("returnn-*.dist-info"))
    shutil.copytree(info, site / info.name)
    return python


@pytest.fixture(scope="module")
def environments(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("returnn_envs")
    clean, edited = _venv_with_returnn(folder / "clean"), _venv_with_returnn(folder / "edited")
    site = next((edited.parent.parent / "lib").glob("python*/site-packages"))
    for path in EDITED.values():
        source = site / path
        source.write_text(source.read_text(encoding="utf-8") + "\n# a local fix\n", encoding="utf-8")
    return clean, edited


@pytest.mark.parametrize("backend, config", [("torch", "torch_baseline.yaml"), ("tf", "tf_baseline.yaml")])
def test_edited_returnn_file_is_named_as_the_first_cause(environments: tuple[Path, Path], backend: str,
                                                         config: str, tmp_path: Path) -> None:
    if backend == "tf":
        pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
    clean, edited = environments
    report = tmp_path / "r.json"
    path = str(FIXTURES / config)
    code, out, err = run_cli("diff", path, path, "--python-a", str(clean), "--python-b", str(edited),
                             "--steps", "1", "-q", "--json", str(report))
    assert code == 1, out + err
    root = json.loads(report.read_text(encoding="utf-8"))["divergences"][0]
    assert (root["category"], root["cause"]) == ("code", "code_change")
    assert root["explanation"].startswith(f"Run B runs other code: run B used returnn {returnn.__version__} "
                                          f"with local changes to "), root["explanation"]
    assert EDITED[backend] in root["explanation"]

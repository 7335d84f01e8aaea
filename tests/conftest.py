"""Shared helpers: write a config beside a copy of the tiny test recipes, record it for real."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

# One intra-op thread for every run the suite starts (record_all passes the caller's OMP_NUM_THREADS on to
# its runs, audit/executors/base.py). Two xdist workers, each running two runs at once on two cores, left
# torch's default thread per core spinning for the others: a 3-step torch fixture run cost 6 to 9 s of CPU
# so, and 3.5 s with one thread. A count set by the caller (CI, a developer) is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

RECIPES = Path(__file__).parent / "recipes"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "configs"


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every run of the session, in every xdist worker and every process they start, keeps its file digests
    (probes/common/stat_cache.py) and summary kernel in one session folder, never in the user's ~/.cache.
    Set before any test starts a run, so that the runs inherit it; a folder the caller set is kept."""
    from tests.shared_runs import shared_folder

    os.environ.setdefault("REPRO_AUDIT_CACHE_DIR", str(shared_folder(tmp_path_factory) / "cache"))


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


@pytest.fixture(scope="session")
def tiny_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 3-step trace of the tiny recipe with step 1's values, shared by the tests that damage copies
    of it (never edit it in place)."""
    from repro_audit.audit.config import load_config
    from repro_audit.audit.runner import record

    folder = tmp_path_factory.mktemp("tiny-trace")
    shutil.copy(RECIPES / "tiny_mlp.py", folder / "tiny_mlp.py")
    (folder / "run.yaml").write_text("recipe: tiny_mlp:build\nseed: 0\nsteps: 3\ncapture: {values: first}\n")
    result = record(load_config(folder / "run.yaml"), folder / "run.trace")
    assert result.ok, result.error
    return folder / "run.trace"


@pytest.fixture(scope="session")
def resign() -> Any:
    """`resign(trace)`: list a trace's files in its manifest as they are now, as the writer would have, so
    that a test's edits by hand reach the validator instead of stopping at the digests."""
    import json

    from repro_audit.audit.trace.integrity import inventory

    def sign(trace: Path) -> None:
        manifest = json.loads((trace / "manifest.json").read_text())
        if isinstance(manifest, dict):
            manifest["files"], manifest["step_records"] = inventory(trace)
            (trace / "manifest.json").write_text(json.dumps(manifest))

    return sign


# The modules that take longest (measured with --durations on 2 cores: the Keras and real-architecture checks
# 200-290 s, the pytest plugin's inner sessions, the TF differ's shared runs, torchrun, --verify 115-165 s),
# run first. xdist's loadscope hands whole modules out in collection order, and collected alphabetically these
# came in the middle: one of them started last left the other worker idle for minutes at the end.
LONGEST_FIRST = (
    "tests/real_models/test_keras_models.py",
    "tests/real_models/test_real_models.py",
    "tests/audit/test_pytest_plugin.py",
    "tests/audit/test_diff_tf.py",
    "tests/audit/test_distributed.py",
    "tests/audit/test_verify.py",
)


def pytest_collection_finish(session: pytest.Session) -> None:
    """After collection a worker holds torch, TensorFlow, Keras and the test modules (about 800,000 objects)
    for the rest of the session. Frozen, they are out of the collector's sight: a full collection during an
    in-process test then scans what the tests made, not the libraries (measured: in-process TF modules
    17% faster; before, a full collection took 0.5 to 0.8 s)."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))

    def rank(item: pytest.Item) -> int:
        try:
            path = Path(str(item.path)).relative_to(root).as_posix()
        except ValueError:
            return len(LONGEST_FIRST)
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every module keeps its own order, the others their collection order

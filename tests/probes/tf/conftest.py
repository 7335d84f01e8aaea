"""Record TensorFlow runs in this process, straight through `repro_audit.probes.tf.recorder.record_run`.

Each run is seeded and gets a fresh Keras state (record_run clears the session), so two recordings in one
process compare as two processes would. TensorFlow is imported by the tests that need it, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.config import RunConfig, load_config
from repro_audit.audit.trace import Trace, TraceWriter

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "configs" / "tf"
RECIPES = Path(__file__).resolve().parent / "recipes"


def record_config(config: RunConfig, path: Path) -> Trace:
    from repro_audit.probes.tf.recorder import record_run

    writer = TraceWriter(path, framework="tensorflow", config=config.to_dict(), label=config.label)
    steps: list[int] = []
    record_run(config, writer, progress=steps.append)
    writer.finish(complete=True)
    assert steps == list(range(1, config.steps + 1))
    return Trace(path)


@pytest.fixture
def record_fixture(tmp_path: Path) -> Callable[..., Trace]:
    """Record a config of fixtures/configs/tf: `record_fixture("baseline", "params.mode=eager", steps=1)`."""

    def record(name: str, *overrides: str, steps: int | None = None, values: str | None = None,
               label: str | None = None) -> Trace:
        config = load_config(FIXTURES / f"{name}.yaml", overrides=overrides, steps=steps, values=values)
        return record_config(config, tmp_path / f"{label or name}.trace")

    return record


@pytest.fixture
def record_recipe(tmp_path: Path) -> Callable[..., Trace]:
    """Record a recipe of tests/probes/tf/recipes: `record_recipe("tf_graph_seeds:build", params={...})`."""

    def record(recipe: str, *, label: str = "run", **fields: Any) -> Trace:
        config = RunConfig.from_dict({"recipe": recipe, "framework": "tensorflow", "label": label, **fields},
                                     config_dir=str(RECIPES))
        return record_config(config, tmp_path / f"{label}.trace")

    return record


BASELINE_STEPS = 3


@pytest.fixture(scope="module")
def baseline_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trace, Trace]:
    """fixtures/configs/tf/baseline.yaml recorded twice in worker processes, as `check` does, BASELINE_STEPS
    steps each: the same two runs tests/audit/test_diff_tf.py compares (tests/shared_runs.py)."""
    from tests.shared_runs import shared_traces

    config = load_config(FIXTURES / "baseline.yaml", steps=BASELINE_STEPS)
    traces = shared_traces(tmp_path_factory, {"a": (config, 0), "b": (config, 1)})
    return traces["a"], traces["b"]

"""The garbage collector waits during a recorded TensorFlow step and is as the user left it afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.recipe import step_batches
from repro_audit.audit.trace import TraceWriter

from .conftest import FIXTURES

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")


@pytest.fixture
def eager_collector() -> Iterator[None]:
    """The collector on with a low threshold, so an unpaused step would set it off many times."""
    was, threshold = gc.isenabled(), gc.get_threshold()
    gc.enable()
    gc.set_threshold(50)
    yield
    gc.set_threshold(*threshold)
    if was:
        gc.enable()
    else:
        gc.disable()


def _record_steps(tmp_path: Path, config_name: str, *overrides: str) -> tuple[list[bool], list[bool]]:
    """Two real recorded steps; returns, per collection, whether it ran inside a step, and whether the
    collector was on after each step."""
    from repro_audit.probes.tf.recorder import open_recording

    config = load_config(FIXTURES / f"{config_name}.yaml", overrides=list(overrides), steps=2)
    writer = TraceWriter(tmp_path / "run.trace", framework="tensorflow", config=config.to_dict(), label="run")
    in_step = [False]
    collections: list[bool] = []
    after: list[bool] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(in_step[0])

    gc.callbacks.append(count)
    try:
        with open_recording(config, writer) as recording:
            for step, batch in enumerate(step_batches(recording.recipe.batches, steps=2, spec=config.recipe),
                                         start=1):
                in_step[0] = True
                recording.step(step, batch)
                in_step[0] = False
                after.append(gc.isenabled())
    finally:
        gc.callbacks.remove(count)
    writer.finish(complete=True)
    return collections, after


@pytest.mark.parametrize("config_name, overrides", [
    ("baseline", ("params.mode=eager",)),
    ("baseline", ("params.mode=function",)),
    ("graph_baseline", ()),
])
def test_no_collection_inside_a_recorded_step(eager_collector: None, tmp_path: Path, config_name: str,
                                              overrides: tuple[str, ...]) -> None:
    collections, after = _record_steps(tmp_path, config_name, *overrides)
    assert collections, "building the recipe runs collections: the callback is in place"
    # At most the one held back, which runs the moment the collector is on again at the end of the step.
    assert sum(collections) <= 2, f"{sum(collections)} collections ran inside two recorded steps"
    assert after == [True, True]


def test_a_collector_the_user_turned_off_stays_off(eager_collector: None, tmp_path: Path) -> None:
    gc.disable()
    collections, after = _record_steps(tmp_path, "baseline", "params.mode=function")
    assert after == [False, False] and not any(collections)  # not even at the end of a step

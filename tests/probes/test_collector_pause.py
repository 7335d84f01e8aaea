"""The garbage collector waits during a recorded step and is as the user left it afterwards; a worker imports
its framework with the collector off and builds the recipe with it on."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import repro_audit
from repro_audit.audit.config import CAPTURE_DEFAULTS, RunConfig, load_config
from repro_audit.audit.runner import record
from repro_audit.audit.trace import Trace
from repro_audit.probes.common.collector import frozen_imports
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder
from tests.helpers import one_line

TF_RECIPES = Path(__file__).parent / "tf" / "recipes"


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 3))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _recorded_steps(steps: int, seen: list[bool], in_step: list[bool]) -> None:
    """Real recorded steps; `seen` gets whether the collector was on inside each forward pass, and
    `in_step` holds True from the start of each step to the end of its record."""
    model, optimizer = _model()
    recorder = TorchStepRecorder(model, optimizer, capture=dict(CAPTURE_DEFAULTS), weight_of=lambda _: 1.0,
                                 ledger=RandomLedger(module_of=lambda: None))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    def loss() -> dict[str, Any]:
        seen.append(gc.isenabled())
        return {"ce": torch.nn.functional.cross_entropy(model(x), y)}

    for step in range(1, steps + 1):
        optimizer.zero_grad()
        in_step[0] = True
        recorder.begin_step(step, (x, y), replay=loss)
        recorder.backward(recorder.combine_loss(loss()))
        recorder.after_backward()
        optimizer.step()
        recorder.finish_graph()
        record = recorder.end_step()
        in_step[0] = False
        assert gc.isenabled(), "the collector is on again once the step record is made"
        assert record["parameters"]
    recorder.close()


def test_no_collection_runs_inside_a_recorded_step(collector_on: None) -> None:
    collections: list[int] = []
    inside: list[bool] = []
    in_step = [False]

    def counted(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and in_step[0]:
            collections.append(info["generation"])

    gc.callbacks.append(counted)
    try:
        gc.set_threshold(50)  # a collection every 50 objects net: a step makes thousands
        _recorded_steps(3, inside, in_step)
    finally:
        gc.callbacks.remove(counted)
        gc.set_threshold(700, 10, 10)
    assert inside == [False, False, False]
    assert collections == []


def test_a_collector_turned_off_by_the_user_stays_off() -> None:
    was = gc.isenabled()
    gc.disable()
    try:
        inside: list[bool] = []
        model, optimizer = _model()
        recorder = TorchStepRecorder(model, optimizer, capture=dict(CAPTURE_DEFAULTS), weight_of=lambda _: 1.0,
                                     ledger=RandomLedger(module_of=lambda: None))
        recorder.begin_step(1, None)
        inside.append(gc.isenabled())
        recorder.backward(recorder.combine_loss({"l": model(torch.randn(4, 6)).sum()}))
        recorder.after_backward()
        recorder.end_step()
        recorder.close()
        assert inside == [False] and not gc.isenabled()
    finally:
        if was:
            gc.enable()


def test_attach_mode_turns_the_collector_on_again_when_the_users_step_raises(tmp_path: Path,
                                                                            collector_on: None) -> None:
    model, optimizer = _model()
    with repro_audit.attach(tmp_path / "x.trace", model=model, optimizer=optimizer) as run:
        with pytest.raises(RuntimeError, match="user's step"), run.step(None):
            assert not gc.isenabled()
            raise RuntimeError("the user's step failed")
        assert gc.isenabled()  # the run goes on (the user caught it): its next steps are recorded
        with run.step(None) as step:
            step.backward(step.loss({"l": model(torch.randn(4, 6)).pow(2).mean()}))
    assert gc.isenabled()
    assert len(Trace(tmp_path / "x.trace").steps) == 1


def test_attach_mode_collector_between_steps(tmp_path: Path, collector_on: None) -> None:
    model, optimizer = _model()
    states = []
    with repro_audit.attach(tmp_path / "y.trace", model=model, optimizer=optimizer) as run:
        for _ in range(2):
            with run.step(None) as step:
                states.append(gc.isenabled())
                optimizer.zero_grad()
                step.backward(step.loss({"l": model(torch.randn(4, 6)).pow(2).mean()}))
                optimizer.step()
            states.append(gc.isenabled())
    assert states == [False, True, False, True]


# The worker's import of the framework.

def test_frozen_imports_hold_the_collector_off_then_freeze_what_was_made(collector_on: None) -> None:
    before = gc.get_freeze_count()
    with frozen_imports():
        assert not gc.isenabled()
        made = [[index] for index in range(1000)]  # container objects the collector tracks
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)


def test_frozen_imports_leave_a_collector_the_user_turned_off_off() -> None:
    was = gc.isenabled()
    gc.disable()
    try:
        with frozen_imports():
            pass
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("framework", ["torch", pytest.param("tensorflow", marks=pytest.mark.tensorflow)])
def test_a_worker_imports_its_framework_frozen_and_builds_with_the_collector_on(
        framework: str, write_config: Any, tmp_path: Path) -> None:
    """The recipe builds with the collector on, after the framework's objects (hundreds of thousands) were
    frozen by the worker; before, every run paid a quarter of its framework's import in full collections."""
    if framework == "torch":
        config = load_config(write_config(recipe="tiny_mlp:build_showing_collector", steps=1))
    else:
        pytest.importorskip("tensorflow")
        config = RunConfig.from_dict({"recipe": "tf_keras_names:sequential_showing_collector", "steps": 1,
                                      "framework": "tensorflow", "params": {"widths": [4, 1]}},
                                     config_dir=str(TF_RECIPES))
    result = record(config, tmp_path / "run.trace")
    assert result.ok, result.failure_line()
    log = Trace(tmp_path / "run.trace").log_text()
    [line] = [line for line in log.splitlines() if line.startswith("collector")]
    enabled, frozen = (field.split("=")[1] for field in line.split()[1:])
    assert enabled == "True" and int(frozen) > 100_000, line


def test_a_framework_that_cannot_be_imported_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The worker imports the framework first now: a missing one is still the user's error, said once."""
    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named tensorflow (shadowed)")\n')
    config = Path(__file__).parents[2] / "fixtures" / "configs" / "tf" / "baseline.yaml"
    command = [sys.executable, "-m", "repro_audit.audit.cli_main", "record", str(config), "--steps", "1",
               "-o", str(tmp_path / "run.trace"), "-q"]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "TensorFlow is not installed: pip install 'repro-audit[tensorflow]'" in line, line

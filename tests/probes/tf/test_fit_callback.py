"""The Keras fit callback (repro_audit.keras.AuditCallback) on a tiny two-output model: what its traces hold and
how they compare, with each other and with the runner's trace of the same model built by a recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import ConfigError, OutputError
from repro_audit.audit.trace import Trace
from tests.probes.tf.conftest import RECIPES, record_config

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
sys.path.insert(0, str(RECIPES))
import tf_fit

from repro_audit.audit.diff.compare import compare_traces
from repro_audit.keras import AuditCallback

SEED = 3
EPOCHS = 2
STEPS = EPOCHS * tf_fit.SAMPLES // tf_fit.BATCH_SIZE
WEIGHTS = {"out_a": 1.0, "out_b": 0.0}


def fit(path: Path, *, weights: Mapping[str, float] = WEIGHTS, params: Mapping[str, Any] | None = None,
        run_eagerly: bool = False, config: Mapping[str, Any] | None = None, steps_per_execution: int = 1,
        x: Any = None, epochs: int = EPOCHS) -> Trace:
    """One seeded fit recorded by the callback, as a user's script would run it."""
    params = dict(params or {})
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    net = tf_fit.model(params)
    tf_fit.compile_for_fit(net, params, dict(weights), run_eagerly=run_eagerly,
                           steps_per_execution=steps_per_execution)
    data_x, data_y = tf_fit.data()
    callback = AuditCallback(path, seed=SEED, config=config, source_dir=RECIPES)
    if x is None:
        net.fit(data_x, data_y, batch_size=tf_fit.BATCH_SIZE, epochs=epochs, shuffle=False, verbose=0,
                callbacks=[callback])
    else:
        net.fit(x, epochs=epochs, verbose=0, callbacks=[callback])
    return Trace(path)


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    folder = tmp_path_factory.mktemp("fit")
    config = RunConfig.from_dict({"recipe": "tf_fit:build", "framework": "tensorflow", "label": "recipe",
                                  "seed": SEED, "steps": STEPS, "loss_weights": WEIGHTS}, config_dir=str(RECIPES))
    found = {
        "compiled": fit(folder / "compiled.trace"),
        "compiled_again": fit(folder / "compiled_again.trace"),
        "eager": fit(folder / "eager.trace", run_eagerly=True),
        "eager_again": fit(folder / "eager_again.trace", run_eagerly=True),
        "weighted": fit(folder / "weighted.trace", weights={"out_a": 1.0, "out_b": 0.25}),
        "batch_norm": fit(folder / "batch_norm.trace", params={"batch_norm": True}, epochs=1),
        "recipe": record_config(config, folder / "recipe.trace"),
        "fit_as_recipe": fit(folder / "fit_as_recipe.trace", config=config.to_dict()),
    }
    return found


def steps_of(trace: Trace) -> list[dict[str, Any]]:
    return trace.steps


def test_a_fit_trace_holds_every_batch_with_terms_gradients_and_state(traces: dict[str, Trace]) -> None:
    trace = traces["compiled"]
    assert trace.manifest["complete"] is True
    steps = steps_of(trace)
    assert [record["step"] for record in steps] == list(range(1, STEPS + 1))
    first = steps[0]
    assert {name: term["weight"] for name, term in first["loss_terms"].items()} == WEIGHTS
    # The total Keras backpropagated is the weighted sum: the zero-weighted term is recorded, not counted.
    assert first["total_loss"] == pytest.approx(first["loss_terms"]["out_a"]["value"])
    assert first["loss_terms"]["out_b"]["value"] > 0
    assert set(first["batch"]["tensors"]) == {"x", "y.out_a", "y.out_b"}
    assert set(first["gradients"]) == set(first["parameters"]) == {
        "body.kernel", "body.bias", "out_a.kernel", "out_a.bias", "out_b.kernel", "out_b.bias"}
    # out_b's head gets an all-zero gradient through its zero weight, and Adam keeps state for it.
    assert first["gradients"]["out_b.kernel"]["norm"] == 0.0
    assert set(first["optimizer"]["state"]["body.kernel"]) == {"momentum", "velocity"}
    assert first["optimizer"]["scalars"]["iterations"] == 1
    assert first["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
    # What the callback cannot see is marked as not captured, not left to look like "nothing happened".
    assert first["random_draws"] is None and first["module_outputs"] is None and first["graph"] is None
    assert any("not captured" in note for note in first["notes"])
    assert steps[1]["parameters"]["body.kernel"]["hash"] != first["parameters"]["body.kernel"]["hash"]


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_two_fit_runs_of_one_seed_compare_identical(traces: dict[str, Trace], mode: str) -> None:
    comparison = compare_traces(traces[mode], traces[f"{mode}_again"])
    assert comparison.identical, [d.explanation for d in comparison.divergences[:3]]
    assert comparison.category_counts["gradients"]["compared"] == 6 * STEPS


def test_the_cli_compares_two_fit_traces(traces: dict[str, Trace]) -> None:
    same = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "compare", str(traces["compiled"].path),
                           str(traces["compiled_again"].path)], check=False, capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.startswith("IDENTICAL")


def test_a_changed_weight_of_a_zero_weighted_output_is_found_and_named(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["compiled"], traces["weighted"])
    first = comparison.first_divergence
    assert first is not None
    assert (first.category, first.cause) == ("config", "config_change")
    assert "loss_weights.out_b" in first.explanation
    terms = [d for d in comparison.walk() if d.category == "loss_terms" and d.step == 1]
    assert terms[0].name == "out_b" and terms[0].evidence["weight"] == {"a": 0.0, "b": 0.25}


def test_a_fit_trace_compares_identical_with_the_recipe_run_of_the_same_model(traces: dict[str, Trace]) -> None:
    comparison = compare_traces(traces["recipe"], traces["fit_as_recipe"])
    assert comparison.identical, [d.explanation for d in comparison.divergences[:3]]
    counts = comparison.category_counts
    for category in ("data", "loss_terms", "gradients", "parameters", "optimizer", "initialisation"):
        assert counts[category]["compared"] > 0, category
    # Layer outputs and draws: captured by the runner only, so skipped rather than reported as missing.
    assert counts["module_outputs"]["compared"] == 0
    recipe_steps, fit_steps = steps_of(traces["recipe"]), steps_of(traces["fit_as_recipe"])
    assert recipe_steps[-1]["parameters"] == fit_steps[-1]["parameters"]
    assert recipe_steps[0]["batch"]["hash"] == fit_steps[0]["batch"]["hash"]


def test_batch_norm_moving_statistics_are_recorded_per_batch_as_buffers(traces: dict[str, Trace]) -> None:
    steps = steps_of(traces["batch_norm"])
    assert set(steps[0]["buffers"]) == {"norm.moving_mean", "norm.moving_variance"}
    means = [record["buffers"]["norm.moving_mean"]["hash"] for record in steps]
    assert len(set(means)) == len(steps)  # updated by every training batch
    assert "norm.gamma" in steps[0]["gradients"]


def test_steps_per_execution_above_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps_per_execution=1"):
        fit(tmp_path / "run.trace", steps_per_execution=2)
    assert not (tmp_path / "run.trace").exists()


def test_a_folder_that_is_not_a_trace_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="results"):
        fit(target)
    assert (target / "notes.txt").read_text() == "mine"


def test_a_fit_that_fails_leaves_an_incomplete_trace_of_the_steps_before(tmp_path: Path) -> None:
    x, y = tf_fit.data()

    def batches() -> Any:
        for index, start in enumerate(range(0, tf_fit.SAMPLES, tf_fit.BATCH_SIZE)):
            if index == 2:
                raise RuntimeError("the data source broke")
            yield x[start:start + 4], {name: y[name][start:start + 4] for name in tf_fit.OUTPUTS}

    dataset = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, 3), tf.float32), {name: tf.TensorSpec((None, 1), tf.float32) for name in tf_fit.OUTPUTS}))
    with pytest.raises(Exception, match="the data source broke"):
        fit(tmp_path / "run.trace", x=dataset, epochs=1)
    trace = Trace(tmp_path / "run.trace")
    assert trace.manifest["complete"] is False
    assert trace.manifest["error"]["step"] == 3
    assert [record["step"] for record in steps_of(trace)] == [1, 2]
    assert not (tmp_path / "run.trace.partial").exists()
    assert json.loads((tmp_path / "run.trace" / "manifest.json").read_text())["steps_recorded"] == 2

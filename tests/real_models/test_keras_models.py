"""Real Keras models (keras_architectures.py): deterministic runs compare identical in every mode, and a
BatchNorm statistic difference, an extra random op, an extra layer created first and a decay-only effect
are each found and named by the mechanism that changes the numbers.

The recordings are shared through the session fixtures of conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.diff import compare_traces
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace
from repro_audit.probes.tf.tensors import LARGE_NUMEL
from repro_audit.reports.text import render_text

from .conftest import KERAS_CHECKS
from .verdicts import cause_named

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")


def baseline(keras_checked: Callable[[str, str], Any], recipe: str, mode: str) -> Trace:
    return Trace(keras_checked(recipe, mode)[1][0])


@pytest.mark.parametrize(("recipe", "mode"), list(KERAS_CHECKS))
def test_runs_of_a_deterministic_keras_model_are_identical(keras_checked: Callable[[str, str], Any], recipe: str,
                                                           mode: str) -> None:
    completed, traces = keras_checked(recipe, mode)
    runs = KERAS_CHECKS[recipe, mode]
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    assert f"IDENTICAL: {runs} runs" in completed.stdout
    assert len(traces) == runs
    first = Trace(traces[0])
    assert len(first.steps) == 2
    for record in first.steps:
        assert record["random_draws"], "dropout draws are recorded"
        assert all(draw["rng_fingerprint"] != "unavailable" for draw in record["random_draws"]), record["notes"]
        assert not [note for note in record["notes"] if "not captured" in note or "not readable" in note]
    # One loss term: step 1's attribution is read off the step's own gradients, every reached parameter named.
    [entry] = first.steps[0]["term_attribution"].values()
    gradients = first.steps[0]["gradients"]
    assert entry["norm"].keys() == {name for name, summary in gradients.items() if summary is not None}
    assert entry["params_nonzero"] == len(entry["nonzero"]) > 10 and entry["params_nonfinite"] == 0
    if recipe == "mobilenet":  # BatchNorm's moving statistics are training state, recorded every step
        moving = [name for name in first.steps[0]["buffers"] if name.endswith("moving_mean")]
        assert len(moving) > 10
        assert first.steps[0]["buffers"][moving[0]]["hash"] != first.steps[1]["buffers"][moving[0]]["hash"]
        assert first.steps[1]["optimizer"]["scalars"]["iterations"] == 2


def test_batchnorm_momentum_is_found_in_the_moving_statistics(keras_checked: Callable[[str, str], Any],
                                                               keras_variant_traces: dict[str, Trace]) -> None:
    comparison = compare_traces(baseline(keras_checked, "mobilenet", "function"),
                                keras_variant_traces["mobilenet_momentum"])
    assert not comparison.identical
    assert cause_named(comparison, "config_change").evidence  # bn_momentum is named as what changed
    flat = list(comparison.walk())
    moving = [d for d in flat if d.category == "buffers" and "moving_mean" in d.name]
    assert moving and moving[0].step == 1, render_text(comparison)
    # Training normalises with the batch's own statistics: the parameters follow the same path.
    assert not [d for d in flat if d.category in ("parameters", "gradients", "loss_terms")], render_text(comparison)


def test_extra_random_op_in_a_zero_weighted_branch_is_named(keras_checked: Callable[[str, str], Any],
                                                           keras_variant_traces: dict[str, Trace]) -> None:
    comparison = compare_traces(baseline(keras_checked, "transformer", "eager"),
                                keras_variant_traces["transformer_noise"])
    text = render_text(comparison)
    draws = [d for d in comparison.walk() if d.category == "random_draws"]
    added = [d for d in draws if d.kind == "added"]
    assert added and added[0].evidence["op"] == "keras.random.normal", text
    shift = cause_named(comparison, "random_stream_shift")
    assert "keras.random.normal" in shift.explanation and "root module" in shift.explanation
    # A Keras generator moves one step per draw, whatever its size: one draw later, not "128 values later".
    assert "state 1 draw later in run B" in shift.explanation and "values later" not in shift.explanation, text
    # The shared token dropout draws from the same global generator after it: its mask moved.
    assert shift.evidence["first_shifted"] and "token_dropout" in shift.evidence["first_shifted"], text
    # The extra head's kernel seed is drawn before MultiHeadAttention builds its projections at first call.
    offset = cause_named(comparison, "seed_offset_shift")
    assert "noise_head" in offset.explanation and "attention" in offset.name, text


def test_extra_layer_created_first_is_a_seed_offset_shift(keras_checked: Callable[[str, str], Any],
                                                          keras_variant_traces: dict[str, Trace]) -> None:
    comparison = compare_traces(baseline(keras_checked, "transformer", "eager"),
                                keras_variant_traces["transformer_probe_first"])
    headline = comparison.causes[0]
    assert headline.cause == "seed_offset_shift", render_text(comparison)
    assert "probe" in headline.explanation
    shifted = {d.name for d in comparison.walk() if d.category == "initialisation" and d.kind == "changed"}
    assert any("embed" in name for name in shifted) and any("classifier" in name for name in shifted)


def test_zero_weighted_probe_moves_its_head_only_through_adamw_decay(
        keras_variant_traces: dict[str, Trace]) -> None:
    comparison = compare_traces(keras_variant_traces["transformer_decay"],
                                keras_variant_traces["transformer_decay_probe"])
    decay = cause_named(comparison, "decay_through_zero_gradient")
    assert "probe" in decay.explanation and "weight_decay" in decay.explanation
    moved = {d.name for d in comparison.walk() if d.category == "parameters"}
    assert moved and all("probe" in name for name in moved), moved


def test_keras_traces_compare_identical_across_processes(keras_checked: Callable[[str, str], Any]) -> None:
    """The kept traces of a check compare identical pairwise through the library too."""
    _, traces = keras_checked("transformer", "function")
    assert compare_traces(Trace(traces[0]), Trace(traces[-1])).identical
    assert Path(traces[0]).is_dir()


def test_layer_outputs_summarised_in_the_graph_leave_the_trace_unchanged(
        keras_checked: Callable[[str, str], Any], architecture_folder: Path) -> None:
    """The check's MobileNet runs summarise their large layer outputs with the summary op. A run that keeps
    every step's values returns them whole instead, and one that keeps step 1's values does so at step 1 and
    uses the op at step 2 (two graphs of one step): both train and summarise exactly as the check's runs,
    in the same order."""
    baseline_trace = Trace(keras_checked("mobilenet", "function")[1][0])
    if not baseline_trace.environment.get("summary_op"):
        pytest.skip("no C compiler here for the summary op")
    config = architecture_folder / "keras-mobilenet-function.yaml"
    paths = {values: architecture_folder / f"op-values-{values}.trace" for values in ("first", "all")}
    results = record_all([(load_config(config, values=values), path) for values, path in paths.items()])
    assert all(result.ok for result in results), [result.failure_line() for result in results]
    first, whole = Trace(paths["first"]), Trace(paths["all"])
    large = [entry for entry in baseline_trace.steps[1]["module_outputs"] if entry["summary"]["numel"] >= LARGE_NUMEL]
    assert len(large) > 5, "the op summarised some of MobileNet's layer outputs"
    for other in (whole, first):
        assert compare_traces(baseline_trace, other).identical
        for ours, theirs in zip(baseline_trace.steps, other.steps, strict=True):
            assert ours["module_outputs"] == theirs["module_outputs"]  # every number, in forward order
            assert ours["parameters"] == theirs["parameters"]
    assert first.steps[0]["values"] and not first.steps[1]["values"] and whole.steps[1]["values"]
    # Layer outputs are listed in forward order, small and large alike: the differ reads a step's first
    # differing output from it.
    forward = [entry["path"] for entry in whole.structure["modules"]]
    listed = [entry["module"] for entry in whole.steps[0]["module_outputs"] if entry["module"] in forward]
    assert len(listed) > 50 and listed == sorted(listed, key=forward.index)

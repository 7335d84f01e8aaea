"""Raw TF random draws in eager and tf.function steps (issue 19): stateful random ops with their op seeds,
tf.random.Generator draws with their state, and Keras SeedGenerator draws, recorded per step and compared.

Every run is recorded for real, in its own subprocess as `diff` does, so the op seeds and generator states
must agree from process to process. The recipe is tests/probes/tf/recipes/tf_random_ops.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.config import RunConfig
from repro_audit.audit.diff import compare_traces
from repro_audit.audit.divergence import Comparison, Divergence
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")

RECIPES = Path(__file__).resolve().parent / "recipes"
MODES = ("eager", "function")
VARIANTS: dict[str, dict[str, Any]] = {"base": {}, "base_again": {}, "noise": {"noise": True},
                                       "extra_sample": {"extra_samples": 1}}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Trace]:
    folder = tmp_path_factory.mktemp("tf-random-ops")
    names = [(mode, variant) for mode in MODES for variant in VARIANTS]
    jobs = []
    for mode, variant in names:
        config = RunConfig.from_dict({"recipe": "tf_random_ops:net", "framework": "tensorflow",
                                      "label": f"{mode}-{variant}", "steps": 2,
                                      "params": {"mode": mode, **VARIANTS[variant]},
                                      "loss_weights": {"noise": 0.0, "samples": 0.0}}, config_dir=str(RECIPES))
        jobs.append((config, folder / f"{mode}-{variant}.trace"))
    results = record_all(jobs)
    assert all(result.ok for result in results), [result.failure_line() for result in results if not result.ok]
    return {name: Trace(path) for name, (_, path) in zip(names, jobs)}


def draws(trace: Trace, step: int, module: str) -> list[dict[str, Any]]:
    return [d for d in trace.step(step)["random_draws"] if d["module"] == module]


def with_cause(comparison: Comparison, cause: str) -> list[Divergence]:
    return [d for d in comparison.walk() if d.cause == cause]


@pytest.mark.parametrize("mode", MODES)
def test_stateful_ops_are_draws_with_op_layer_count_and_seed(traces: dict[tuple[str, str], Trace], mode: str) -> None:
    base, noise = traces[mode, "base"], traces[mode, "noise"]
    [jitter] = draws(base, 1, "jitter")
    [dropout] = draws(base, 1, "dropout")
    [normal] = draws(noise, 1, "noise")
    for draw, op in ((jitter, "RandomUniform"), (dropout, "RandomUniform"), (normal, "RandomStandardNormal")):
        assert (draw["op"], draw["generator"], draw["phase"], draw["count"]) == (op, "tf-op-seed", "forward", 32)
        assert len(draw["seed"]) == 2 and draw["seed_state"][:2] == draw["seed"]
        assert draw["stream"].endswith(op) and draw["rng_fingerprint"] != "unavailable"
    assert "dropout" in dropout["stream"]
    [dropout_2] = draws(base, 2, "dropout")
    if mode == "function":
        # An unseeded op's seed2 counts the unseeded random ops traced before it; its kernel lives on with the
        # concrete function, so step 2 continues the stream of step 1 (position 1) with the same seeds.
        assert dropout["seed"][1] == 1 and draws(noise, 1, "dropout")[0]["seed"][1] == 2
        assert dropout_2["seed"] == dropout["seed"] and dropout_2["seed_state"][2] == 1
        assert dropout_2["offset_before"] == 32
    else:
        # Eagerly each unseeded op takes the next seed of the global seed's sequence: the added normal takes
        # the seed the dropout had.
        assert normal["seed"] == dropout["seed"]
        assert dropout_2["seed"] != dropout["seed"] and dropout_2["seed_state"][2] == 0


@pytest.mark.parametrize("mode", MODES)
def test_the_same_config_twice_compares_identical(traces: dict[tuple[str, str], Trace], mode: str) -> None:
    comparison = compare_traces(traces[mode, "base"], traces[mode, "base_again"])
    assert comparison.identical, [d.explanation for d in comparison.walk()][:5]
    assert comparison.category_counts["random_draws"]["compared"] == 2 * 4
    assert [d["generator"] for d in traces[mode, "base"].step(1)["random_draws"]] == [
        "tf-op-seed", "tf-random-generator:0", "tf-op-seed", "keras_dropout.seed_generator"]


@pytest.mark.parametrize("mode", MODES)
def test_an_unseeded_normal_in_a_zero_weighted_branch_shifts_the_shared_dropout(
        traces: dict[tuple[str, str], Trace], mode: str) -> None:
    comparison = compare_traces(traces[mode, "base"], traces[mode, "noise"])
    [shift] = with_cause(comparison, "random_stream_shift")
    assert (shift.kind, shift.step, shift.evidence["module"], shift.evidence["op"]) == (
        "added", 1, "noise", "RandomStandardNormal")
    assert shift.evidence["loss_term"] == "noise" and shift.evidence["loss_weight"] == 0.0
    assert shift.evidence["first_shifted"] == "RandomUniform in dropout"
    assert "RandomStandardNormal in noise" in shift.explanation and "op seed" in shift.explanation
    assert "values later" not in shift.explanation
    shifted = [d for d in shift.children if d.kind == "changed"]
    assert shifted[0].evidence["module"] == "dropout" and shifted[0].step == 1
    # The Generator and the Keras SeedGenerator have streams of their own: the extra op does not move them.
    changed = {(d.evidence.get("module"), d.step) for d in comparison.walk()
               if d.category == "random_draws" and d.kind == "changed"}
    assert not {module for module, _ in changed} & {"sampler", "keras_dropout"}
    if mode == "function":  # one trace: the same seeds every step, only the dropout's moved
        assert changed == {("dropout", 1), ("dropout", 2)}
        assert "counts the unseeded random ops traced before it" in shift.explanation
    else:  # every later eager op seed moves, the next step's jitter too
        assert ("jitter", 2) in changed and "global seed's sequence" in shift.explanation


@pytest.mark.parametrize("mode", MODES)
def test_an_extra_generator_draw_shifts_the_later_ones_by_its_count(
        traces: dict[tuple[str, str], Trace], mode: str) -> None:
    base, extra = traces[mode, "base"], traces[mode, "extra_sample"]
    [sample_1], [sample_2] = draws(base, 1, "sampler"), draws(base, 2, "sampler")
    assert (sample_1["op"], sample_1["generator"], sample_1["count"]) == (
        "tf.random.Generator.normal", "tf-random-generator:0", 32)
    assert len(sample_1["seed_state"]) == 3 and sample_2["seed_state"] != sample_1["seed_state"]
    assert (sample_1["offset_before"], sample_2["offset_before"]) == (0, 32)
    comparison = compare_traces(base, extra)
    [shift] = with_cause(comparison, "random_stream_shift")
    assert (shift.kind, shift.evidence["module"], shift.evidence["op"]) == (
        "added", "extra_samplers.0", "tf.random.Generator.normal")
    assert "32 values later in run B" in shift.explanation
    [moved] = [d for d in shift.children if d.kind == "changed" and d.step == 1]
    assert moved.evidence["module"] == "sampler" and moved.evidence["shift"] == 32


@pytest.mark.parametrize("mode", MODES)
def test_keras_seed_generator_draws_and_replay_refusal(traces: dict[tuple[str, str], Trace], mode: str) -> None:
    trace = traces[mode, "base"]
    [first], [second] = draws(trace, 1, "keras_dropout"), draws(trace, 2, "keras_dropout")
    assert (first["op"], first["generator"], first["count"]) == ("keras.random.dropout",
                                                                 "keras_dropout.seed_generator", 32)
    assert second["seed_state"] == [first["seed_state"][0], first["seed_state"][1] + 1]
    # One term: its attribution is the step's own gradients. Two: a replay would advance the stateful
    # streams, so term attribution is skipped with a note.
    assert trace.step(1)["term_attribution"]["mse"]["params_nonzero"] == 4
    step = traces[mode, "noise"].step(1)
    assert step["term_attribution"] is None
    assert any("stateful random ops" in note and "replay would advance" in note for note in step["notes"])

"""A parameter only a zero-weighted term reaches gets a zero gradient instead of none, and weight decay
moves it: named as such, in torch and in Keras."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from repro_audit.audit.config import RunConfig, load_config
from repro_audit.audit.diff import compare_traces
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace

TF_RECIPES = Path(__file__).resolve().parents[1] / "probes" / "tf" / "recipes"


def decayed(comparison):  # type: ignore[no-untyped-def]
    found = [d for d in comparison.walk() if d.cause == "decay_through_zero_gradient"]
    assert found, [(d.cause, d.explanation) for d in comparison.walk() if d.cause]
    return found[0]


@pytest.mark.parametrize(("optimizer", "named"), [("adamw", "AdamW, weight_decay 0.1"), ("sgd", "SGD, weight_decay 0.1")])
def test_decay_moves_a_probe_only_a_zero_weighted_term_reaches(write_config, tmp_path: Path, optimizer: str,
                                                               named: str) -> None:
    jobs = [(load_config(write_config(name, recipe="decay_recipes:build", steps=2, **fields)), tmp_path / f"{name}.trace")
            for name, fields in (("plain", {"params": {"optimizer": optimizer}}),
                                 ("probe", {"params": {"optimizer": optimizer, "probe_term": True},
                                            "loss_weights": {"probe": 0.0}}))]
    assert all(result.ok for result in record_all(jobs))
    plain, probe = (Trace(path) for _, path in jobs)
    assert plain.steps[0]["gradients"]["probe.weight"] is None
    assert probe.steps[0]["gradients"]["probe.weight"]["norm"] == 0.0
    cause = decayed(compare_traces(plain, probe))
    assert cause.step == 1 and cause.name in ("probe.weight", "probe.bias")
    assert "probe.weight" in cause.explanation and named in cause.explanation
    assert "probe (weight 0.0)" in cause.explanation and "in run B only" in cause.explanation


@pytest.mark.tensorflow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
def test_keras_adamw_decays_a_probe_only_a_zero_weighted_term_reaches(tmp_path: Path) -> None:
    jobs = []
    for name, fields in (("plain", {}), ("probe", {"params": {"probe_term": True}, "loss_weights": {"probe": 0.0}})):
        config = RunConfig.from_dict({"recipe": "tf_decay:build", "framework": "tensorflow", "label": name,
                                      "steps": 2, **fields}, config_dir=str(TF_RECIPES))
        jobs.append((config, tmp_path / f"{name}.trace"))
    results = record_all(jobs)
    assert all(result.ok for result in results), [result.failure_line() for result in results]
    cause = decayed(compare_traces(*(Trace(path) for _, path in jobs)))
    assert cause.step == 1 and "probe" in cause.name and "weight_decay 0.1" in cause.explanation


def test_a_mechanism_that_changes_shared_numbers_ranks_above_one_that_changes_none(write_config,
                                                                                   tmp_path: Path) -> None:
    jobs = [(load_config(write_config(name, recipe="private_noise:build", steps=2, **fields)), tmp_path / f"{name}.trace")
            for name, fields in (("plain", {}), ("noisy", {"params": {"noisy": True},
                                                           "loss_weights": {"noise": 0.0}}))]
    assert all(result.ok for result in record_all(jobs))
    comparison = compare_traces(*(Trace(path) for _, path in jobs))
    mechanisms = [d.cause for d in comparison.causes if d.cause != "config_change"]
    assert mechanisms.index("seed_offset_shift") < mechanisms.index("random_stream_shift"), mechanisms
    stream = next(d for d in comparison.causes if d.cause == "random_stream_shift")
    assert stream.evidence["changes_shared"] is False and "no later draw on the shared path moved" in stream.explanation

"""Bisection: delta debugging on made-up tests, the atomic changes of two configs, and for real on the fixture
Transformer: of five changed keys, the one that makes the run diverge (the learning rate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from repro_audit.audit.bisect import Bisection, apply_changes, config_changes, ddmin
from repro_audit.audit.config import load_config
from repro_audit.audit.executors import LocalPool

TORCH = Path(__file__).parent.parent.parent / "fixtures" / "configs" / "torch"


def answering(culprits: set[int], calls: list[list[int]]):
    def reproduces(subsets: list[list[int]]) -> list[bool]:
        calls.extend(subsets)
        return [culprits <= set(subset) for subset in subsets]
    return reproduces


def test_ddmin_finds_one_culprit_and_an_interaction() -> None:
    calls: list[list[int]] = []
    assert ddmin(list(range(5)), answering({3}, calls)) == [3]
    assert len(calls) <= 8
    assert sorted(ddmin(list(range(8)), answering({1, 6}, []))) == [1, 6]  # neither alone reproduces


def test_five_keys_are_five_atomic_changes_and_applying_all_gives_b() -> None:
    a, b = load_config(TORCH / "baseline.yaml"), load_config(TORCH / "baseline_five_changes.yaml")
    changes = config_changes(a, b)
    assert [change.name for change in changes] == ["params.extra_loss_dropout", "params.extra_losses_from_step",
                                                   "params.lr", "params.lr_gamma", "timeout"]
    applied = apply_changes(a, b, changes, scratch=Path("/nonexistent"), label=b.label)
    assert applied.to_dict() == b.to_dict()
    only_lr = apply_changes(a, b, [changes[2]], scratch=Path("/nonexistent"), label="x")
    assert only_lr.params == {"extra_loss": "none", "lr": 0.01} and only_lr.timeout == a.timeout


@pytest.fixture(scope="module")
def five_key_bisection(tmp_path_factory: pytest.TempPathFactory):
    a = load_config(TORCH / "baseline.yaml", steps=2)
    b = load_config(TORCH / "baseline_five_changes.yaml", steps=2)
    return Bisection(a, b, folder=tmp_path_factory.mktemp("bisect"), executor=LocalPool()).run()


def test_bisect_of_five_changed_keys_returns_the_one_that_diverges(five_key_bisection) -> None:
    result = five_key_bisection
    assert [change.name for change in result.minimal] == ["params.lr"]
    assert result.target is not None and result.target.category == "optimizer" and result.target.step == 1
    assert "lr" in result.target.name
    assert result.sentence() == ("1 of 5 changes reproduces B's first divergence (optimizer lr (param group 0) at "
                                 "step 1): params.lr")
    tested = result.to_dict()["tested"]
    assert tested[0] == {"changes": [], "reproduces": False, "first_divergence": None,  # A rerun: deterministic
                         "failed": None}
    assert all(item["reproduces"] == ("params.lr" in item["changes"]) for item in tested)
    assert result.runs == 2 + len(tested) - 1  # the whole set is B itself, never run again


def test_bisect_report_names_the_change_with_its_divergence(five_key_bisection) -> None:
    from repro_audit.reports.text_bisect import render_bisect_text

    text = render_bisect_text(five_key_bisection)
    assert text.startswith("FOUND: 1 of 5 changes")
    assert "Minimal changes (applied to A, they reproduce it):\n  params.lr: '<not set>' -> 0.01" in text
    assert "  timeout: 600.0 -> 300.0" in text

# Bisection over code (A and B in different folders) runs through the Ray executor:
# tests/audit/test_ray_executor.py::test_bisect_over_code_through_ray (one test covers both).

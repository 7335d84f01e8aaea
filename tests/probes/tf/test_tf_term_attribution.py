"""Term attribution of a one-term loss is read off the step's gradients; with two terms it is replayed. Both
must give the same entry for the shared term, in every mode (repro_audit.probes.common.term_attribution)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from repro_audit.audit.trace import Trace
from repro_audit.probes.common.term_attribution import single_term_attribution

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")

RUNS = {  # mode -> (recipe, params of the one-term run, params adding a term that reaches no variable)
    "graph": ("tf_graph_seeds:build", {}, {"extra": "constant"}),
    "function": ("tf_wide:build", {"mode": "function"}, {"mode": "function", "constant_term": True}),
    "eager": ("tf_wide:build", {"mode": "eager"}, {"mode": "eager", "constant_term": True}),
}


@pytest.mark.parametrize("mode", list(RUNS))
def test_one_term_read_off_equals_the_replayed_entry(record_recipe: Callable[..., Trace], mode: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from repro_audit.probes.tf import graph_mode, tf2_loop

    recipe, alone, with_constant = RUNS[mode]
    with monkeypatch.context() as patched:  # the one-term run must not replay
        patched.setattr(graph_mode.GraphProgram, "attribution_fetch", _no_replay)
        patched.setattr(tf2_loop, "attribute_terms", _no_replay)
        one = record_recipe(recipe, label="one", steps=1, params=alone).step(1)
    two = record_recipe(recipe, label="two", steps=1, params=with_constant).step(1)
    read_off, replayed = one["term_attribution"]["mse"], two["term_attribution"]["mse"]
    assert list(two["term_attribution"]) == ["mse", "constant"]
    assert two["term_attribution"]["constant"]["norm"] == {}, "the constant reaches no variable"
    assert read_off["nonzero"] and read_off["nonzero"] == replayed["nonzero"], (read_off, replayed)
    assert read_off["nonfinite"] == replayed["nonfinite"] == {}
    assert (read_off["params_nonzero"], read_off["weight"]) == (replayed["params_nonzero"], replayed["weight"])
    assert read_off["norm"].keys() == replayed["norm"].keys() == one["gradients"].keys()
    for name, norm in read_off["norm"].items():
        assert math.isclose(norm, replayed["norm"][name], rel_tol=1e-6), name


def _no_replay(*args: Any) -> None:
    raise AssertionError("a one-term loss was replayed")


def _summary(numel: int, zeros: int | None, nan: int = 0, inf: int = 0, norm: float = 1.0) -> dict[str, Any]:
    return {"numel": numel, "zeros": zeros, "nan": nan, "inf": inf, "norm": norm}


def test_counts_and_what_makes_a_replay_necessary() -> None:
    summaries = {"gradients/a": _summary(6, 2, nan=1, norm=float("nan")), "gradients/b": _summary(4, 4, norm=0.0)}
    [entry] = single_term_attribution("ce", 0.5, ["a", "b", "no_gradient"], summaries).values()
    assert (entry["nonfinite"], entry["nonzero"], entry["norm"]) == ({"a": 1}, {"a": 4}, {"a": None, "b": 0.0})
    assert (entry["params_nonfinite"], entry["params_nonzero"], entry["weight"]) == (1, 1, 0.5)
    summaries["gradients/b"]["zeros"] = None  # a summary without its zero count: the caller replays
    assert single_term_attribution("ce", 0.5, ["a", "b"], summaries) is None

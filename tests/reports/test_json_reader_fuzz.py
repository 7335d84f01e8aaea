"""Reading a comparison back: any JSON document gives a Comparison the text report renders, or one TraceError.

Documents start from the documented example and from a comparison with health reports, and are damaged
one value at a time (another type, a deleted key, deep nesting). Examples are derandomized so the suite
gives the same result at every run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repro_audit.audit.divergence import Comparison, Divergence, RunInfo
from repro_audit.audit.errors import TraceError
from repro_audit.audit.health import Finding, HealthReport
from repro_audit.reports.json_report import comparison_from_json, render_json
from repro_audit.reports.text import render_text
from tests.helpers import paths_in

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
DOCUMENTED = (Path(__file__).parents[2] / "docs" / "json-schema.md").read_text(encoding="utf-8") \
    .split("```json\n", 1)[1].split("```", 1)[0]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                    st.sampled_from(["NaN", "Infinity", 10 ** 400, -(2 ** 64)]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=10)
WRONG = [None, True, 0, -1, 1.5, "", "x", [], [None], {}, {"": None}, 10 ** 400]
DEEP = "__deep__"


def with_health() -> str:
    """A comparison whose health reports hold findings, as the differ attaches them."""
    finding = Finding(rule="exploding_gradients", layer="fc", step=1, measure="gradient norm", value=float("nan"),
                      threshold=1e3, message="gradient norm nan > 1e3", steps=[1, 2],
                      worst={"step": 2, "value": float("inf")}, evidence={"grad_max_abs": float("nan")})
    report = HealthReport(label="b", steps=2, findings=[finding], not_checked=["memory growth: needs 5 steps"])
    divergence = Divergence("gradients", "fc.weight", "nonfinite", step=1, explanation="NaN in run B only.",
                            evidence={"nan_a": 0, "nan_b": 3, "a": 1.5, "b": float("nan")},
                            children=[Divergence("parameters", "fc.weight", "changed", step=1)])
    comparison = Comparison(run_a=RunInfo("a", "/t/a.trace", "torch", True, 2),
                            run_b=RunInfo("b", "/t/b.trace", "torch", False, 1, error="crash at step 2: boom"),
                            divergences=[divergence], partial=True, notes=["run B is incomplete"],
                            category_counts={"gradients": {"compared": 2, "diverged": 1}},
                            health={"a": None, "b": report.as_dict()})
    return render_json(comparison)


BASES = [DOCUMENTED, with_health()]


@st.composite
def damaged_documents(draw: st.DrawFn) -> str:
    document = json.loads(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_in(document)[1:]))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "deep"]))
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = DEEP if action == "deep" else copy.deepcopy(draw(st.one_of(st.sampled_from(WRONG),
                                                                                              json_values)))
    text = json.dumps(document)
    depth = draw(st.sampled_from([40, 120, 5000, 200_000]))
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)


def read_and_render(text: str) -> None:
    try:
        comparison = comparison_from_json(text)
    except TraceError as error:
        assert "\n" not in str(error), "one line"
        return
    render_text(comparison)
    render_json(comparison)


@pytest.mark.parametrize("base", BASES, ids=["documented", "with health"])
def test_the_base_documents_read_back(base: str) -> None:
    assert render_json(comparison_from_json(base)) == base


@FUZZ
@given(text=damaged_documents())
def test_a_damaged_comparison_renders_or_is_one_trace_error(text: str) -> None:
    read_and_render(text)


@FUZZ
@given(value=json_values)
def test_any_json_document_renders_or_is_one_trace_error(value: Any) -> None:
    read_and_render(json.dumps(value))
    read_and_render(json.dumps({"schema": "repro-audit-comparison", "schema_version": 1, "run_a": value,
                                "run_b": value, "divergences": value, "health": value}))


@pytest.mark.parametrize("depth", [200, 100_000])
def test_a_deep_divergence_tree_is_refused(depth: int) -> None:
    leaf: dict[str, Any] = {"category": "gradients", "name": "w", "kind": "changed", "children": []}
    document = json.loads(DOCUMENTED)
    document["divergences"] = [DEEP]
    text = json.dumps(document).replace(json.dumps(DEEP), '{"category": "g", "name": "w", "kind": "k", "children": ['
                                        * depth + json.dumps(leaf) + "]}" * depth)
    with pytest.raises(TraceError, match="nested"):
        comparison_from_json(text)

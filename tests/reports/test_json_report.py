"""The JSON report: strict JSON (no bare NaN), sorted and stable, documented keys, and a faithful round trip.

The comparisons are built by hand as the differ builds them: a config change whose consequences are a
new module, a seed-offset shift, another op graph and gradients that differ, one of them NaN.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from repro_audit.audit.divergence import Comparison, Divergence, RunInfo, count_diverged
from repro_audit.audit.errors import TraceError, UserError
from repro_audit.reports.json_report import SCHEMA, SCHEMA_VERSION, comparison_from_json, render_json
from repro_audit.reports.text import render_text

KEY = "loss.terms.att_entropy_l0.weight"
ENTROPY = "decoder.layers.0.cross_attn.entropy"
TOP_LEVEL = {"schema", "schema_version", "identical", "partial", "run_a", "run_b", "tolerance", "first_divergence",
             "divergences", "category_counts", "notes", "changed", "mechanisms"}
DIVERGENCE_KEYS = {"category", "step", "name", "kind", "explanation", "cause", "evidence", "counted", "children"}
HOSTILE = "\u202e</script>\x1b[2J\"\\\n" + "w" * 100_000


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity tokens, as every strict JSON reader does."""
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def gradient(step: int, name: str, **evidence: Any) -> Divergence:
    values = {"numel": 1024, "mismatched": 1000, "max_abs_error": 0.0123, "max_rel_error": 0.5,
              "median_abs_error": 0.001, "max_ulp": 81920, "nan_a": 0, "nan_b": 0, "inf_a": 0, "inf_b": 0,
              "first_indices": [[0, 0], [0, 1]], "passes_at_atol": 0.0123}
    return Divergence("gradients", name, "changed", step=step, evidence={**values, **evidence})


def config_comparison() -> Comparison:
    """Finite, plain-Python evidence only: reads back equal, field by field."""
    module = Divergence("graph", f"module {ENTROPY}", "added",
                        explanation=f"module {ENTROPY} (Entropy, 0 parameters) exists only in run B.",
                        evidence={"module": ENTROPY, "type": "Entropy", "parameters": 0})
    module_tree = Divergence("graph", "module tree", "changed", cause="graph_change", children=[module], counted=False,
                             explanation=f"The model is built differently: run B has 1 modules run A lacks ({ENTROPY}).",
                             evidence={"added": [ENTROPY], "removed": []})
    seed = Divergence("initialisation", "decoder.out.weight", "changed", cause="seed_offset_shift",
                      explanation="Parameter decoder.out.weight got other initial values because 1024 more random "
                                  "values were drawn before it in run B (183040 vs 184064).",
                      evidence={"seed_offset": {"a": 183040, "b": 184064}, "creation_index": {"a": 20, "b": 21},
                                "shift": 1024, "max_ulp": 2139095039, "mismatched": 1024, "numel": 1024})
    op_graph = Divergence("graph", "op graph at step 1", "changed", step=1, cause="graph_change",
                          explanation="at step 1 run B runs 14 ops that run A does not.",
                          evidence={"graph_step": 1, "opcodes": [["equal", 0, 180, 0, 180], ["insert", 180, 180, 180, 194]],
                                    "ops_added": 14, "ops_removed": 0,
                                    "by_group": [{"module": ENTROPY, "loss_term": "att_entropy_l0", "added": 14,
                                                  "removed": 0}]})
    root = Divergence("config", "config change", "changed", cause="config_change", counted=False,
                      explanation=f"The configs differ in 1 key: {KEY} is not set in run A and 0.0 in run B.",
                      evidence={KEY: {"a": None, "b": 0.0}},
                      children=[module_tree, seed, op_graph, gradient(1, "decoder.out.weight"),
                                gradient(1, "decoder.out.bias")])
    return Comparison(run_a=RunInfo("baseline", "/tmp/a.trace", "torch", True, 3),
                      run_b=RunInfo("entropy", "/tmp/b.trace", "torch", True, 3), divergences=[root],
                      category_counts={"config": {"compared": 30, "diverged": 1},
                                       "gradients": {"compared": 174, "diverged": 2}},
                      notes=["not compared (--ignore): health"])


def nan_comparison() -> Comparison:
    """Non-finite floats, numpy scalars and arrays, a tuple and a hostile long value in the evidence."""
    comparison = config_comparison()
    nan = gradient(2, "decoder.out.weight", a=np.float32(4.341), b=float("nan"), nan_b=np.int64(1024),
                   max_abs_error=float("inf"), max_rel_error=-math.inf, median_abs_error=np.float64("nan"),
                   values=np.arange(6, dtype=np.float32).reshape(2, 3), flags=np.array([True, False]),
                   pair=(1, 2), evil=HOSTILE, loss_weight=0.0, loss_term="att_entropy_l0", node="MulBackward0")
    nan.kind = "nonfinite"
    comparison.divergences[0].children.append(nan)
    comparison.partial = True
    comparison.run_b.complete = False
    comparison.run_b.error = "RuntimeError at step 3"
    comparison.tolerance = {"rtol": 1e-05, "atol": 3e-07}
    return comparison


def test_strict_json_with_schema_and_documented_keys() -> None:
    data = strict_loads(render_json(nan_comparison()))
    assert set(data) == TOP_LEVEL
    assert (data["schema"], data["schema_version"]) == (SCHEMA, SCHEMA_VERSION) == ("repro-audit-comparison", 1)
    assert data["identical"] is False and data["partial"] is True
    assert data["tolerance"] == {"atol": 3e-07, "rtol": 1e-05}
    assert data["run_b"] == {"label": "entropy", "trace_path": "/tmp/b.trace", "framework": "torch",
                             "complete": False, "steps_recorded": 3, "error": "RuntimeError at step 3"}
    root = dict(data["divergences"][0])
    assert root.pop("children") and data["first_divergence"] == root, "the root, its children written once"
    for node in _walk(data["divergences"]):
        assert set(node) == DIVERGENCE_KEYS
    assert data["category_counts"]["gradients"] == {"compared": 174, "diverged": 2}


def test_nonfinite_floats_and_numpy_values_become_plain_json() -> None:
    data = strict_loads(render_json(nan_comparison()))
    evidence = data["divergences"][0]["children"][-1]["evidence"]
    assert evidence["a"] == 4.341000080108643  # float32 4.341, exactly as a double
    assert (evidence["b"], evidence["max_abs_error"], evidence["max_rel_error"], evidence["median_abs_error"]) == \
        ("NaN", "Infinity", "-Infinity", "NaN")
    assert evidence["nan_b"] == 1024 and type(evidence["nan_b"]) is int
    assert evidence["values"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert evidence["flags"] == [True, False]
    assert evidence["pair"] == [1, 2]
    assert evidence["evil"] == HOSTILE  # whole: the text report cuts it, the JSON keeps it


def test_sorted_keys_indent_two_and_deterministic() -> None:
    text = render_json(nan_comparison())
    assert text == json.dumps(strict_loads(text), sort_keys=True, indent=2) + "\n"
    assert text.startswith('{\n  "category_counts": {')
    assert text == render_json(nan_comparison())
    assert render_json(config_comparison()) == render_json(config_comparison())


def test_round_trip_is_equal() -> None:
    comparison = config_comparison()
    back = comparison_from_json(render_json(comparison))
    assert back == comparison
    assert [d.counted for d in back.walk()] == [d.counted for d in comparison.walk()] and not back.divergences[0].counted


def test_round_trip_keeps_nonfinite_floats_and_what_the_text_report_shows() -> None:
    comparison = nan_comparison()
    text = render_json(comparison)
    back = comparison_from_json(text)
    assert render_json(back) == text
    assert render_text(back) == render_text(comparison)
    evidence = back.divergences[0].children[-1].evidence
    assert math.isnan(evidence["b"]) and evidence["max_abs_error"] == math.inf
    assert evidence["max_rel_error"] == -math.inf and evidence["a"] == 4.341000080108643
    assert back.tolerance == {"rtol": 1e-05, "atol": 3e-07}
    assert back.partial and back.run_b.error == "RuntimeError at step 3"


def test_identical_comparison() -> None:
    comparison = Comparison(RunInfo("run 1", "/tmp/1.trace", "torch", True, 5),
                            RunInfo("run 2", "/tmp/2.trace", "torch", True, 5))
    data = strict_loads(render_json(comparison))
    assert data["identical"] is True
    assert (data["first_divergence"], data["divergences"], data["notes"]) == (None, [], [])
    assert data["tolerance"] == {"atol": 0.0, "rtol": 0.0}
    assert comparison_from_json(render_json(comparison)) == comparison


@pytest.mark.parametrize(("change", "message"), [
    ({"schema": "repro-audit-trace"}, "not a repro-audit comparison: schema is 'repro-audit-trace'"),
    ({"schema": None}, "not a repro-audit comparison: schema is None"),
    ({"schema_version": 2}, "repro-audit comparison schema version 2 is not one this version reads (1)"),
    ({"schema_version": "1"}, "repro-audit comparison schema version '1' is not one this version reads (1)"),
    ({"run_a": None}, "repro-audit comparison is malformed"),
    ({"divergences": [{"category": "gradients"}]}, "repro-audit comparison is malformed: KeyError"),
])
def test_other_schemas_versions_and_malformed_documents_are_refused(change: dict[str, Any], message: str) -> None:
    data = strict_loads(render_json(config_comparison()))
    data.update(change)
    with pytest.raises(TraceError, match="^" + re.escape(message)):
        comparison_from_json(json.dumps(data))


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not a repro-audit comparison: invalid JSON"),
    ("[1, 2]", "not a repro-audit comparison: schema is 'list'"),
    ('{"schema": "repro-audit-comparison", "schema_version": 1, "x": NaN}',
     "not a repro-audit comparison: invalid JSON (NaN is not JSON"),
    ('{"schema": "repro-audit-comparison", "schema_version": 1}',
     "repro-audit comparison is missing run_a, run_b, divergences"),
])
def test_invalid_json_is_a_user_error(text: str, message: str) -> None:
    with pytest.raises(UserError, match="^" + re.escape(message)):
        comparison_from_json(text)


def _walk(nodes: list[dict[str, Any]]) -> Any:
    for node in nodes:
        yield node
        yield from _walk(node["children"])



def test_the_documented_example_reads_back_and_renders_to_itself() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "json-schema.md").read_text(encoding="utf-8")
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    comparison = comparison_from_json(example)
    assert render_json(comparison) == example
    assert set(strict_loads(example)) == TOP_LEVEL
    loss = next(d for d in comparison.walk() if d.category == "loss_terms")
    assert math.isnan(loss.evidence["b"])
    # Its counts are the tree's: the config change is a summary over the key, which is the item counted.
    data = strict_loads(example)
    assert data["divergences"][0]["counted"] is False and data["first_divergence"]["counted"] is False
    assert dict(count_diverged(comparison.walk())) == {c: n["diverged"] for c, n in data["category_counts"].items()}

"""Distances between the runs per step (audit/diff/distance.py): exact from values, lower bounds from
summaries, NaN steps, module outputs in forward order with the first differing one, the gradient flow.

Traces are written by hand through TraceWriter, as the probes write them: no model runs here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from repro_audit.audit.diff import compare_traces
from repro_audit.audit.diff.array_stats import ordered_ints
from repro_audit.audit.diff.distance import first_differing
from repro_audit.audit.diff.tensor_distance import tensor_distance, value_distance
from repro_audit.audit.trace import Trace, TraceWriter

OUTPUTS = ["", "encoder", "encoder.embed", "encoder.dropout", "decoder", "decoder.out"]
PARAMETERS = ["encoder.embed.weight", "decoder.out.weight"]


def summary(values: list[float], *, tag: str) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float32)
    finite = array[np.isfinite(array)]
    nan = int(np.isnan(array).sum())
    return {"shape": [len(values)], "dtype": "float32", "numel": len(values), "hash": f"xxh3:{tag}",
            "norm": float(np.linalg.norm(array)), "min": float(array.min()), "max": float(array.max()),
            "mean": float(array.mean()), "max_abs": float(np.abs(array).max()), "nan": nan,
            "inf": int(np.isinf(array).sum()), "zeros": int((finite == 0).sum())}


def values_at(step: int, drift: float, broken: bool) -> list[float]:
    base = [0.5, -1.0, 2.0]
    return [math.nan] * 3 if broken else [value + drift * (10.0 ** step) for value in base]


def write(path: Path, *, run_b: bool) -> Trace:
    """Run B: the same until encoder.dropout (which draws differently), drifting by 1e-7 x 10^step, NaN at
    step 3, with an output only it has."""
    writer = TraceWriter(path, framework="torch", config={"recipe": "x.py", "seed": 0, "steps": 3},
                         label="b" if run_b else "a")
    writer.write_json("structure.json", {"modules": [], "graph_steps": []})
    writer.write_json("initialisation.json", {"generators": {}, "tensors": [
        {"name": name, "kind": "parameter", "creation_index": index, "shape": [3], "dtype": "float32"}
        for index, name in enumerate(PARAMETERS)], "draws": []})
    for step in (1, 2, 3):
        drift = 1e-7 if run_b else 0.0
        broken = run_b and step == 3
        outputs = []
        for name in OUTPUTS:
            same = name in ("encoder.embed",) or not run_b
            tag = f"{name}-{step}" if same else f"{name}-{step}-b"
            outputs.append({"module": name, "call": 0,
                            "summary": summary(values_at(step, 0.0 if same else drift, broken and not same), tag=tag)})
        if run_b:
            outputs.insert(5, {"module": "decoder.extra", "call": 0, "summary": summary([1.0], tag="x")})
        loss = 2.0 / step + (drift * 10 ** step if run_b else 0.0)
        writer.append_step({
            "step": step, "loss_terms": {"ce": {"weight": 1.0, "value": math.nan if broken else loss,
                                                "hash": f"xxh3:{loss}"}},
            "total_loss": math.nan if broken else loss, "module_outputs": outputs,
            "gradients": {name: summary(values_at(step, drift, broken), tag=f"g{name}{step}{run_b}")
                          for name in PARAMETERS},
            "parameters": {name: summary([1.0, 2.0, 3.0], tag=f"p{name}") for name in PARAMETERS},
            "nan_provenance": None, "term_attribution": None, "notes": []})
    writer.finish(complete=True)
    return Trace(path)


def test_summaries_give_lower_bounds_from_the_extremes() -> None:
    a, b = summary([0.5, -1.0, 2.0], tag="a"), summary([0.5, -1.25, 2.0], tag="b")
    distance = tensor_distance(a, b)
    assert distance is not None and not distance.exact and distance.differs
    assert distance.max_abs == 0.25 and distance.max_rel == 0.25 / 2.0
    ulp = int(ordered_ints(np.asarray([-1.25], np.float32), np.int32)[0] -
              ordered_ints(np.asarray([-1.0], np.float32), np.int32)[0])
    assert distance.max_ulp == abs(ulp), "the ULP distance of the minima"
    same = tensor_distance(a, {**a})
    assert same is not None and same.exact and not same.differs and same.max_abs == 0.0


def test_values_evidence_is_exact_and_nan_hides_a_summary_distance() -> None:
    a, b = summary([1.0, 2.0], tag="a"), summary([1.0, 2.5], tag="b")
    exact = tensor_distance(a, b, {"compared_by": "values", "max_abs_error": 0.5, "max_ulp": 4194304})
    assert exact is not None and exact.exact and (exact.max_abs, exact.max_ulp) == (0.5, 4194304)
    hidden = tensor_distance(a, summary([math.nan, math.nan], tag="n"),
                             {"compared_by": "values", "max_abs_error": 0.0, "nonfinite_mismatch": 2})
    assert hidden is not None and hidden.max_abs is None and hidden.nan, "no finite pair: not known, not 0"
    broken = tensor_distance(a, summary([math.nan, 2.0], tag="c"))
    assert broken is not None and broken.max_abs is None and broken.nan and broken.differs
    assert tensor_distance(a, None) is None


def test_loss_values_are_exact_with_float32_ulp() -> None:
    one = float(np.float32(1.0))
    next_up = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    distance = value_distance(one, next_up)
    assert distance is not None and distance.exact and distance.max_ulp == 1
    nan = value_distance(one, math.nan)
    assert nan is not None and nan.nan and nan.max_abs is None


def test_first_differing_output_is_the_first_without_a_differing_submodule() -> None:
    assert first_differing(["[logits]", "encoder", "encoder.dropout", "decoder.out"]) == "encoder.dropout"
    assert first_differing(["encoder.attn[0]", "encoder.attn.q"]) == "encoder.attn.q"
    assert first_differing(["encoder.attn[0]", "encoder.attn[1]"]) == "encoder.attn[0]"


def test_step_distances_of_two_traces(tmp_path: Path) -> None:
    comparison = compare_traces(write(tmp_path / "a.trace", run_b=False), write(tmp_path / "b.trace", run_b=True))
    distances = comparison.distances
    assert distances is not None and distances["steps"] == [1, 2, 3]
    gradients = distances["categories"]["gradients"]
    assert [round(math.log10(value)) for value in gradients["max_abs"][:2]] == [-6, -5], "growth by a decade"
    assert gradients["max_abs"][2] is None and gradients["nan"] == [0, 0, 2]
    assert gradients["differing"] == [2, 2, 2] and not any(gradients["exact"])
    assert distances["categories"]["parameters"]["differing"] == [0, 0, 0]
    assert distances["categories"]["loss_terms"]["exact"] == [True, True, True]
    names = [row["name"] for row in distances["modules"]]
    assert names == ["", "encoder", "encoder.embed", "encoder.dropout", "decoder", "decoder.extra", "decoder.out"]
    assert distances["modules"][5]["runs"] == "b" and distances["modules"][2]["differs"] == [False] * 3
    assert distances["first_module"] == {"name": "encoder.dropout", "step": 1}
    flow = distances["gradient_flow"]
    assert flow["names"] == PARAMETERS and [panel["step"] for panel in flow["panels"]] == [1, 3]
    assert flow["panels"][1]["nan"] == [True, True]


def test_ignored_categories_are_neither_measured_nor_clean(tmp_path: Path) -> None:
    comparison = compare_traces(write(tmp_path / "a.trace", run_b=False), write(tmp_path / "b.trace", run_b=True),
                                ignore=["gradients", "module_outputs"])
    assert comparison.ignored == ["module_outputs", "gradients"]
    assert comparison.distances is not None and "gradients" not in comparison.distances["categories"]
    assert "modules" not in comparison.distances and "gradient_flow" not in comparison.distances
    assert comparison.to_dict()["ignored"] == ["module_outputs", "gradients"]

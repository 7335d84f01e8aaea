"""Trace writing and reading: atomic, streamed, versioned, and refusing what it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit.errors import TraceError
from audit.trace import Trace, TraceWriter, finalize_partial


def test_round_trip_with_values(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "a.trace", framework="torch", config={"seed": 0}, label="a")
    assert not (tmp_path / "a.trace").exists(), "the final path appears only when the trace is finished"
    writer.write_json("environment.json", {"python": {"version": "3.11"}})
    writer.append_step({"step": 1, "loss_terms": {"ce": {"value": float("nan")}}})
    writer.write_values(1, {"gradients/w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    writer.finish(complete=True)
    trace = Trace(tmp_path / "a.trace")
    assert trace.complete and trace.label == "a" and trace.framework == "torch"
    assert np.isnan(trace.steps[0]["loss_terms"]["ce"]["value"])
    values = trace.values(1)
    assert values is not None and values.keys() == ["gradients/w"]
    assert values.get("gradients/w").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_crash_keeps_earlier_steps(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "b.trace", framework="torch", config={}, label="b")
    writer.append_step({"step": 1})
    writer.append_step({"step": 2})
    with open(writer.staging / "steps.jsonl", "a") as handle:
        handle.write('{"step": 3, "grad')  # the process died mid-line
    finalize_partial(tmp_path / "b.trace", error={"kind": "crash", "message": "killed", "step": 3})
    trace = Trace(tmp_path / "b.trace")
    assert not trace.complete and trace.error["kind"] == "crash"
    assert [s["step"] for s in trace.steps] == [1, 2]
    assert trace.manifest["steps_recorded"] == 2


def test_refuses_newer_schema_and_corruption(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "c.trace", framework="torch", config={}, label="c")
    writer.append_step({"step": 1})
    writer.finish(complete=True)
    manifest = tmp_path / "c.trace" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(TraceError, match="schema version 99.*upgrade repro-audit"):
        Trace(tmp_path / "c.trace")
    data["schema_version"] = 1
    manifest.write_text(json.dumps(data))
    (tmp_path / "c.trace" / "steps.jsonl").write_text('{"step": 1}\n{"step": 2, "gr\n')
    with pytest.raises(TraceError, match="corrupt: steps.jsonl line 2"):
        Trace(tmp_path / "c.trace").steps
    manifest.write_text("{not json")
    with pytest.raises(TraceError, match="corrupt: cannot read manifest.json"):
        Trace(tmp_path / "c.trace")
    with pytest.raises(TraceError, match="trace not found"):
        Trace(tmp_path / "missing.trace")


@pytest.mark.parametrize("odd", [float("nan"), float("inf"), -float("inf"), np.float64("nan"), np.float32("-inf")],
                         ids=["nan", "inf", "-inf", "numpy-nan", "numpy-float32-inf"])
def test_a_non_finite_number_anywhere_in_a_step_reads_back_as_itself(odd: float) -> None:
    """The fast encoder writes NaN as null; a step holding one must keep it apart from "not measured"."""
    from audit.trace.format import dumps_step

    record = {"step": 3, "gradients": {"w": {"norm": 1.5, "min": odd, "zeros": None}},
              "optimizer": {"param_groups": [{"betas": [0.9, odd]}]}}
    read = json.loads(dumps_step(record))
    for found in (read["gradients"]["w"]["min"], read["optimizer"]["param_groups"][0]["betas"][1]):
        assert found is not None and (np.isnan(found) if np.isnan(odd) else found == odd)
    assert read["gradients"]["w"]["zeros"] is None


def test_a_step_encoded_fast_reads_back_as_json_would_write_it() -> None:
    from audit.trace.format import dumps_step

    record = {"step": 2, "loss_terms": {"ce": {"weight": 0.0, "value": 6.907755374908447, "hash": "xxh3:ab"}},
              "tiny": 1e-300, "huge": 1.7976931348623157e308, "counts": (1, 2), "numpy": np.float32(0.1),
              "flags": [True, False, None], "text": "é\"\n", "big": 2**70}
    expected = json.loads(json.dumps(record, default=lambda v: v.item()))
    assert json.loads(dumps_step(record)) == expected
    del record["big"]  # orjson takes everything left: the fast path, same values
    del expected["big"]
    assert json.loads(dumps_step(record)) == expected


def test_non_finite_numbers_where_the_fast_encoder_cannot_mark_them_still_read_back() -> None:
    """In a tuple or a set a number cannot be swapped for a marker, and a record may hold a marker itself."""
    from audit.trace import format as fmt

    marker = fmt._MARKERS["NaN"]
    records = [{"pair": (1.0, float("nan")), "x": [float("-inf")]}, {"set": {float("inf")}},
               {"label": marker, "value": float("nan")}, {"labels": [marker, marker], "value": 1.5}]
    for record in records:
        read = json.loads(fmt.dumps_step(record), parse_constant=lambda name: f"<{name}>")
        expected = json.loads(json.dumps(record, default=fmt._default), parse_constant=lambda name: f"<{name}>")
        assert read == expected
    assert records[2]["value"] != records[2]["value"], "the caller's record is left as it was"
    assert records[0]["x"] == [float("-inf")]

"""Step lines: encoded fast, with every non-finite number written as `json` writes it, never as null."""

from __future__ import annotations

import json

import numpy as np
import pytest

from repro_audit.audit.trace import step_lines
from repro_audit.audit.trace.format import json_default
from repro_audit.audit.trace.step_lines import dumps_step


@pytest.mark.parametrize("odd", [float("nan"), float("inf"), -float("inf"), np.float64("nan"), np.float32("-inf")],
                         ids=["nan", "inf", "-inf", "numpy-nan", "numpy-float32-inf"])
def test_a_non_finite_number_anywhere_in_a_step_reads_back_as_itself(odd: float) -> None:
    """The fast encoder writes NaN as null; a step holding one must keep it apart from "not measured"."""
    record = {"step": 3, "gradients": {"w": {"norm": 1.5, "min": odd, "zeros": None}},
              "optimizer": {"param_groups": [{"betas": [0.9, odd]}]}}
    read = json.loads(dumps_step(record))
    for found in (read["gradients"]["w"]["min"], read["optimizer"]["param_groups"][0]["betas"][1]):
        assert found is not None and (np.isnan(found) if np.isnan(odd) else found == odd)
    assert read["gradients"]["w"]["zeros"] is None


def test_a_step_encoded_fast_reads_back_as_json_would_write_it() -> None:
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
    marker = step_lines._MARKERS["NaN"]
    records = [{"pair": (1.0, float("nan")), "x": [float("-inf")]}, {"set": {float("inf")}},
               {"label": marker, "value": float("nan")}, {"labels": [marker, marker], "value": 1.5}]
    for record in records:
        read = json.loads(dumps_step(record), parse_constant=lambda name: f"<{name}>")
        expected = json.loads(json.dumps(record, default=json_default), parse_constant=lambda name: f"<{name}>")
        assert read == expected
    assert records[2]["value"] != records[2]["value"], "the caller's record is left as it was"
    assert records[0]["x"] == [float("-inf")]

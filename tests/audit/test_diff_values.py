"""Value statistics and name matching of the differ, on small arrays and name lists."""

from __future__ import annotations

import numpy as np

from repro_audit.audit.diff.matching import match_names
from repro_audit.audit.diff.values import Tolerance, array_evidence, max_ulp_distance, summaries_equal


def test_ulp_distance_counts_representable_floats_between_values() -> None:
    one = np.array([1.0], dtype=np.float32)
    assert max_ulp_distance(one, np.nextafter(one, np.float32(2))) == 1
    assert max_ulp_distance(one, one) == 0
    # Across zero: the smallest negative and positive subnormals are two steps apart (via +0).
    tiny = np.array([np.nextafter(np.float32(0), np.float32(1))], dtype=np.float32)
    assert max_ulp_distance(tiny, -tiny) == 2
    assert max_ulp_distance(np.array([1.0], np.float64), np.array([1.0], np.float32)) is None


def test_array_evidence_reports_counts_errors_and_first_indices() -> None:
    a = np.zeros((2, 3), dtype=np.float32)
    b = a.copy()
    b[1, 2] = 0.5
    evidence = array_evidence(a, b, Tolerance())
    assert evidence["mismatched"] == 1 and evidence["numel"] == 6
    assert evidence["max_abs_error"] == 0.5
    assert evidence["first_indices"] == [[1, 2]]
    assert evidence["passes_at_atol"] == 0.5
    assert array_evidence(a, b, Tolerance(atol=0.5))["mismatched"] == 0


def test_nan_in_one_run_is_a_mismatch_and_nan_in_both_is_not_hidden_by_tolerance() -> None:
    a = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    b = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    evidence = array_evidence(a, b, Tolerance(rtol=1.0, atol=1.0))
    assert evidence["mismatched"] == 1
    assert (evidence["nan_a"], evidence["nan_b"], evidence["nonfinite_mismatch"]) == (1, 0, 1)
    assert "passes_at_atol" not in evidence, "no tolerance passes a NaN against a number"
    both = array_evidence(a, a.copy(), Tolerance())
    assert both["mismatched"] == 0 and both["nan_a"] == both["nan_b"] == 1


def test_summaries_compare_by_hash_bitwise_and_by_statistics_within_tolerance() -> None:
    a = {"hash": "x", "shape": [2], "nan": 0, "inf": 0, "norm": 1.0, "mean": 0.5, "min": 0.0, "max": 1.0,
         "max_abs": 1.0}
    b = dict(a, hash="y", norm=1.0 + 1e-9)
    assert not summaries_equal(a, b, Tolerance())
    assert summaries_equal(a, b, Tolerance(atol=1e-6))
    assert not summaries_equal(a, dict(b, nan=1), Tolerance(atol=1.0))


def test_keras_counters_are_matched_as_renames_not_add_and_remove() -> None:
    # A Dense layer inserted after `dense`: the old dense_1 (8 -> 2) is now dense_2, the new one is dense_1.
    before = {"dense/kernel": (4, 8), "dense/bias": (8,), "dense_1/kernel": (8, 2), "dense_1/bias": (2,)}
    after = {"dense/kernel": (4, 8), "dense/bias": (8,), "dense_1/kernel": (8, 8), "dense_1/bias": (8,),
             "dense_2/kernel": (8, 2), "dense_2/bias": (2,)}
    match = match_names(list(before), list(after),
                        signature=lambda side, name: (before if side == "a" else after)[name])
    assert match.renamed == [("dense_1/kernel", "dense_2/kernel"), ("dense_1/bias", "dense_2/bias")]
    assert match.added == ["dense_1/kernel", "dense_1/bias"]
    assert match.removed == []
    assert ("dense/kernel", "dense/kernel") in match.pairs


def test_order_changes_are_reported_as_moved() -> None:
    match = match_names(["a", "b", "c", "d"], ["a", "c", "b", "d"])
    assert match.added == [] and match.removed == []
    assert len(match.moved) == 1

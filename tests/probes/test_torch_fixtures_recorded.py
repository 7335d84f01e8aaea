"""The seed's story on the real fixture Transformer, recorded through the runner in subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace

TORCH = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch"


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    folder = tmp_path_factory.mktemp("fixture-traces")
    names = ["baseline", "baseline_again", "zero_att_loss_simplified", "zero_entropy_loss"]
    jobs = []
    for name in names:
        config = load_config(TORCH / f"{name.replace('_again', '')}.yaml", steps=2)
        jobs.append((config, folder / f"{name}.trace"))
    results = record_all(jobs)
    assert all(result.ok for result in results), [result.failure_line() for result in results if not result.ok]
    return {name: Trace(path) for name, (_, path) in zip(names, jobs)}


def _hashes(trace: Trace) -> list[dict[str, str]]:
    rows = []
    for step in trace.steps:
        row = {f"g/{k}": v["hash"] for k, v in step["gradients"].items() if v}
        row.update({f"p/{k}": v["hash"] for k, v in step["parameters"].items()})
        row.update({f"o/{o['module']}#{o['call']}": o["summary"]["hash"] for o in step["module_outputs"]})
        row["batch"] = step["batch"]["hash"]
        rows.append(row)
    return rows


def test_baseline_recorded_twice_is_bitwise_identical(traces: dict[str, Trace]) -> None:
    assert _hashes(traces["baseline"]) == _hashes(traces["baseline_again"])
    init = lambda t: [(r["name"], r["summary"]["hash"], r["seed_offset"]) for r in t.initialisation["tensors"]]  # noqa: E731
    assert init(traces["baseline"]) == init(traces["baseline_again"])


def test_extra_loss_layers_shift_later_seed_offsets(traces: dict[str, Trace]) -> None:
    base = {r["name"]: r for r in traces["baseline"].initialisation["tensors"]}
    extra = {r["name"]: r for r in traces["zero_att_loss_simplified"].initialisation["tensors"]}
    added = sorted(set(extra) - set(base))
    assert added and all(".att_loss." in name for name in added)
    encoder = [n for n in base if n.startswith("encoder.")]
    assert encoder and all(base[n]["summary"]["hash"] == extra[n]["summary"]["hash"] for n in encoder)
    later = [n for n in base if base[n]["seed_offset"] is not None and extra[n]["seed_offset"] is not None
             and extra[n]["creation_index"] > min(extra[a]["creation_index"] for a in added)]
    assert later
    shifted = [n for n in later if extra[n]["seed_offset"] > base[n]["seed_offset"]]
    assert shifted, "parameters created after the extra loss layers must get later seed offsets"


def test_nan_provenance_names_term_op_and_module(traces: dict[str, Trace]) -> None:
    first = traces["zero_entropy_loss"].steps[0]
    provenance = first["nan_provenance"]
    assert provenance and provenance["nonfinite_parameters"]
    origin = provenance["origins"][0]
    assert origin["loss_term"] == "att_entropy_l0" and origin["loss_weight"] == 0.0
    assert origin["forward_op"] == "aten::mul" and origin["node"] == "MulBackward0"
    assert sorted(origin["inputs_from"]) == ["aten::_log_softmax", "aten::_softmax"]
    assert origin["module"] == "decoder.layers.0.att_loss"
    assert origin["saved_nonfinite"]["other"]["neginf"] > 0
    attribution = first["term_attribution"]["att_entropy_l0"]
    assert attribution["weight"] == 0.0 and attribution["params_nonfinite"] > 0
    assert first["term_attribution"]["ce"]["params_nonfinite"] == 0
    assert all(step["nan_provenance"] is None for step in traces["baseline"].steps)


def test_masked_attention_scores_keep_their_minus_infinity_in_the_trace(traces: dict[str, Trace]) -> None:
    """Step lines are encoded fast, and the fast encoder would write -inf as null ("not measured")."""
    for step in traces["baseline"].steps:
        scores = [o["summary"] for o in step["module_outputs"] if o["module"].endswith("self_attn[2]")]
        assert scores, "the fixture's attention returns its masked scores"
        for summary in scores:
            assert summary["min"] == float("-inf") and summary["max_abs"] == float("inf")
            assert summary["inf"] > 0 and summary["nan"] == 0
            assert summary["norm"] == float("inf") and summary["mean"] == float("-inf")

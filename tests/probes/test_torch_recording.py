"""Recording real tiny torch runs: what each probe writes into the trace."""

from __future__ import annotations

import shutil
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import yaml

from repro_audit.audit.config import load_config
from repro_audit.audit.runner import RunResult, record
from repro_audit.audit.trace import Trace
from tests.helpers import in_background, will_run

RECIPES = Path(__file__).parents[1] / "recipes"


def recorded(write_config, tmp_path: Path, name: str, **fields) -> Trace:  # type: ignore[no-untyped-def]
    config = load_config(write_config(name, **fields))
    result = record(config, tmp_path / f"{name}.trace")
    assert result.ok, result.failure_line()
    return Trace(tmp_path / f"{name}.trace")


def test_two_recordings_are_bitwise_identical(write_config, tmp_path: Path) -> None:
    a = recorded(write_config, tmp_path, "a", recipe="tiny_mlp:build", steps=3)
    # Keeping the tensors for values files changes nothing recorded, the op graph included.
    b = recorded(write_config, tmp_path, "b", recipe="tiny_mlp:build", steps=3, capture={"values": "all"})
    assert b.values(1) is not None and a.values(1) is None
    assert [(op["phase"], op["op"]) for op in a.graph(1)["ops"]] == [(op["phase"], op["op"]) for op in b.graph(1)["ops"]]
    for step_a, step_b in zip(a.steps, b.steps):
        for category in ("gradients", "parameters"):
            assert {k: v["hash"] for k, v in step_a[category].items()} == \
                   {k: v["hash"] for k, v in step_b[category].items()}
        assert [o["summary"]["hash"] for o in step_a["module_outputs"]] == \
               [o["summary"]["hash"] for o in step_b["module_outputs"]]
        assert step_a["random_draws"] == step_b["random_draws"]
        assert step_a["graph"]["digest"] == step_b["graph"]["digest"]
    assert [t["summary"]["hash"] for t in a.initialisation["tensors"]] == \
           [t["summary"]["hash"] for t in b.initialisation["tensors"]]


def test_creation_order_and_seed_offsets_shift(write_config, tmp_path: Path) -> None:
    base = recorded(write_config, tmp_path, "base", recipe="tiny_mlp:build", steps=1)
    extra = recorded(write_config, tmp_path, "extra", recipe="tiny_mlp:build", steps=1,
                     params={"extra_branch": True}, loss_weights={"extra": 0.0})
    by_name = lambda t: {r["name"]: r for r in t.initialisation["tensors"]}  # noqa: E731
    b, e = by_name(base), by_name(extra)
    assert b["0.weight"]["seed_offset"] == e["0.weight"]["seed_offset"] == 0
    assert b["0.weight"]["summary"]["hash"] == e["0.weight"]["summary"]["hash"]
    # extra.weight (8x2) and extra.bias (2) are drawn before out.*: 18 more values.
    assert e["out.weight"]["seed_offset"] - b["out.weight"]["seed_offset"] == 18
    assert e["out.weight"]["summary"]["hash"] != b["out.weight"]["summary"]["hash"]
    assert e["extra.weight"]["creation_index"] < e["out.weight"]["creation_index"]
    draws = [d for d in extra.initialisation["draws"] if d["target"] == "extra.weight"]
    assert draws and draws[0]["module"] == "extra" and draws[0]["count"] == 16


def test_step_records_and_graph(write_config, tmp_path: Path) -> None:
    trace = recorded(write_config, tmp_path, "g", recipe="tiny_mlp:build", steps=2, capture={"values": "first"},
                     params={"extra_branch": True}, loss_weights={"extra": 0.0})
    first, second = trace.steps
    assert first["loss_terms"]["extra"]["weight"] == 0.0 and first["loss_terms"]["ce"]["weight"] == 1.0
    assert first["total_loss"] == pytest.approx(first["loss_terms"]["ce"]["value"])
    # Dropout draws continue the init offsets: 4*8+8 + 8*2+2 + 8*3+3 = 85 values drawn while building.
    assert [d["offset_before"] for d in first["random_draws"]] == [85]
    assert second["random_draws"][0]["offset_before"] == 85 + 16 * 8
    assert first["random_draws"][0]["module"] == "2"
    attribution = first["term_attribution"]["extra"]
    assert attribution["params_nonzero"] == 0 and attribution["params_nonfinite"] == 0
    assert first["term_attribution"]["ce"]["params_nonzero"] >= 4
    assert first["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert set(first["optimizer"]["state"]["out.weight"]) == {"step", "exp_avg", "exp_avg_sq"}
    graph = trace.graph(1)
    assert graph is not None and graph["level"] == "aten"
    terms = {op["loss_term"] for op in graph["ops"] if op["phase"] == "forward"}
    assert {"ce", "extra", "shared"} <= terms
    assert any(op["op"] == "aten::bernoulli_" and op["module"] == "2" for op in graph["ops"])
    assert {op["phase"] for op in graph["ops"]} == {"forward", "backward", "optimizer"}
    values = trace.values(1)
    assert values is not None
    grad = values.get("gradients/out.weight")
    assert grad is not None and grad.shape == (3, 8)
    assert trace.values(0).get("initial/out.weight").shape == (3, 8)  # type: ignore[union-attr]
    env = trace.environment
    assert env["framework"]["name"] == "torch" and "deterministic_algorithms" in env["determinism"]
    assert "tiny_mlp" in env["modules"] and env["modules"]["tiny_mlp"]["path"] == "tiny_mlp.py"


def test_nan_provenance_names_term_op_and_inputs(write_config, tmp_path: Path) -> None:
    trace = recorded(write_config, tmp_path, "nan", recipe="tiny_mlp:build_masked_entropy", steps=2,
                     loss_weights={"entropy": 0.0})
    first = trace.steps[0]
    assert first["loss_terms"]["entropy"]["value"] == first["loss_terms"]["entropy"]["value"]  # finite
    assert first["gradients"]["0.weight"]["nan"] > 0
    origins = first["nan_provenance"]["origins"]
    origin = origins[0]
    assert origin["node"] == "MulBackward0" and origin["forward_op"] == "aten::mul"
    assert origin["loss_term"] == "entropy" and origin["loss_weight"] == 0.0
    assert sorted(origin["inputs_from"]) == ["aten::_log_softmax", "aten::_softmax"]
    assert origin["saved_nonfinite"]["other"]["neginf"] == 16 * 5
    attribution = first["term_attribution"]["entropy"]
    assert attribution["weight"] == 0.0 and attribution["params_nonfinite"] == 2
    assert first["term_attribution"]["ce"]["params_nonfinite"] == 0
    # Provenance is traced where the outbreak starts, not again while it continues.
    assert trace.steps[1]["nan_provenance"] is None


def test_crash_keeps_steps_before_it(write_config, tmp_path: Path) -> None:
    config = load_config(write_config("crash", recipe="tiny_mlp:build_crashing", steps=4))
    result = record(config, tmp_path / "crash.trace")
    assert not result.ok and "synthetic failure at step 2" in result.failure_line()
    trace = Trace(tmp_path / "crash.trace")
    assert not trace.complete and [s["step"] for s in trace.steps] == [1]
    assert trace.error["step"] == 2 and "RuntimeError" in trace.error["traceback"]


@pytest.fixture(scope="module", autouse=True)
def hanging_run(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Future[tuple[RunResult, Path]] | None:
    """A run that hangs at step 2, started before the module's first test: it waits out its timeout while the
    other tests run (30 s: step 1 must come before it, beside this module's and the other worker's runs)."""
    if not will_run(request, "test_hang_is_killed_at_timeout"):
        return None
    folder = tmp_path_factory.mktemp("hang")
    shutil.copy(RECIPES / "tiny_mlp.py", folder / "tiny_mlp.py")
    config = {"recipe": "tiny_mlp:build_hanging", "steps": 4, "timeout": 30}
    (folder / "hang.yaml").write_text(yaml.safe_dump(config))

    def run() -> tuple[RunResult, Path]:
        return record(load_config(folder / "hang.yaml"), folder / "hang.trace"), folder / "hang.trace"

    return in_background(run)


def test_hang_is_killed_at_timeout(hanging_run: Future[tuple[RunResult, Path]] | None) -> None:
    assert hanging_run is not None
    result, path = hanging_run.result()
    assert not result.ok and result.error["kind"] == "timeout"
    assert "timed out" in result.failure_line()
    trace = Trace(path)
    assert not trace.complete and [s["step"] for s in trace.steps] == [1]


def test_values_are_the_tensors(write_config, tmp_path: Path) -> None:
    trace = recorded(write_config, tmp_path, "v", recipe="tiny_mlp:build", steps=1, capture={"values": "all"})
    values = trace.values(1)
    assert values is not None
    param = values.get("parameters/out.weight")
    summary = trace.steps[0]["parameters"]["out.weight"]
    assert float(np.linalg.norm(param)) == pytest.approx(summary["norm"], rel=1e-6)


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_summaries_match_numpy_on_every_path(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large tensors (hashed and reduced one by one), small ones (stacked by size), views, half types;
    by the native kernel where it can be built, and by torch reductions."""
    import torch

    from repro_audit.probes.common import native_summary
    from repro_audit.probes.common.hashing import summarize_array
    from repro_audit.probes.torch.tensors import SMALL_NUMEL, as_numpy, summarize

    if kernel == "native" and native_summary.kernel() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(native_summary, "_loaded", [native_summary.kernel()] if kernel == "native" else [None])

    generator = torch.Generator().manual_seed(0)
    large = torch.randn(SMALL_NUMEL + 77, generator=generator)
    large[::5] = 0.0
    large[1::7] = -0.0  # counted as a zero, like +0.0
    tensors = [large, torch.randn(64, 300, generator=generator).t(),  # a view that is not contiguous
               torch.randn(3, 5, generator=generator), torch.zeros(3, 5), torch.randn(15, generator=generator),
               torch.tensor([0.0, -0.0, 2.0]), torch.tensor(4.0),
               torch.randn(SMALL_NUMEL * 2, dtype=torch.float64),
               torch.tensor([float("nan"), 1.0, float("inf"), 0.0]),
               torch.randn(SMALL_NUMEL + 1, generator=generator).half()]
    for tensor, summary in zip(tensors, summarize(tensors), strict=True):
        expected = summarize_array(as_numpy(tensor).astype(np.float64) if tensor.dtype == torch.float16
                                   else as_numpy(tensor))
        assert summary["hash"] == summarize_array(as_numpy(tensor))["hash"]
        assert summary["shape"] == list(tensor.shape) and summary["numel"] == tensor.numel()
        for key in ("min", "max", "max_abs", "nan", "inf", "zeros"):
            both_nan = summary[key] != summary[key] and expected[key] != expected[key]
            assert summary[key] == expected[key] or both_nan, key
        for key in ("norm", "mean"):
            if np.isfinite(expected[key]):
                assert summary[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
            else:
                assert not np.isfinite(summary[key]), key
    assert summarize(tensors[:3], count_zeros=False)[0]["zeros"] is None

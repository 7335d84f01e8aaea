"""RETURNN's own torch engine, recorded and compared: the seed's rows on a tiny RETURNN setup.

Skipped only where RETURNN cannot be imported (install it with `pip install 'repro-audit[returnn]'`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import run_cli

returnn = pytest.importorskip("returnn", reason="RETURNN is not installed: pip install 'repro-audit[returnn]'")
pytest.importorskip("tree", reason="dm-tree (needed by RETURNN) is not installed: pip install 'repro-audit[returnn]'")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "returnn"


def _divergences(report: Path) -> list[dict[str, Any]]:
    return json.loads(report.read_text(encoding="utf-8"))["divergences"]


def _walk(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    every = []
    for divergence in found:
        every.append(divergence)
        every.extend(_walk(divergence.get("children") or []))
    return every


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two-epoch baseline (with values and RETURNN's own checkpoints kept), the early-layer run and the
    pretrain-like variant: one recording each, shared by the tests."""
    folder = tmp_path_factory.mktemp("returnn")
    traces = {"baseline": folder / "baseline.trace", "early": folder / "early.trace",
              "pretrain": folder / "pretrain.trace", "checkpoint": folder / "model" / "model"}
    code, out, err = run_cli("record", str(FIXTURES / "torch_baseline_epochs.yaml"), "-o", str(traces["baseline"]),
                             "--values", "all", "--set", f"params.model={traces['checkpoint']}", "-q")
    assert code == 0, out + err
    for name, config in (("early", "torch_early_layer.yaml"), ("pretrain", "torch_pretrain.yaml")):
        code, out, err = run_cli("record", str(FIXTURES / config), "-o", str(traces[name]), "-q")
        assert code == 0, out + err
    return traces


def test_zero_scaled_losses_per_head_change_the_graph_and_no_shared_number(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    code, out, err = run_cli("diff", str(FIXTURES / "torch_baseline.yaml"),
                             str(FIXTURES / "torch_zero_aux_per_head.yaml"), "-q", "--json", str(report))
    assert code == 1, out + err
    found = _walk(_divergences(report))
    categories = {d["category"] for d in found}
    assert "graph" in categories
    # The zero-scaled terms are there, by name and with RETURNN's scale 0.0 ...
    added = {d["name"] for d in found if d["category"] == "loss_terms"}
    assert {"aux_l0_h0", "aux_l0_h1", "aux_l1_h0", "aux_l1_h1"} <= {name.split()[-1] for name in added}
    # ... and RETURNN leaves them out of its total: no gradient, update or parameter changes.
    assert not categories & {"gradients", "optimizer", "parameters", "initialisation", "random_draws"}


def test_layer_created_earlier_shifts_seed_offsets(recorded: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    code, out, err = run_cli("compare", str(recorded["baseline"]), str(recorded["early"]), "-q", "--json",
                             str(report))
    assert code == 1, out + err
    found = {d["name"]: d for d in _walk(_divergences(report)) if d["category"] == "initialisation"}
    embed = found["embed.weight"]
    assert embed["evidence"]["seed_offset"] == {"a": 0, "b": 1}
    assert embed["explanation"] == (
        "Parameter embed.weight got other initial values: the layer early, created before it only in run B, moves "
        "the seeds of the shared layers created after it (RETURNN's torch backend seeds every random op with the "
        "next seed of one sequence, in creation order); it takes the 1st seed of the sequence in run A and the 2nd "
        "in run B. 5 tensors created after it are shifted as well.")
    assert found["lstm.ff_weight"]["explanation"] == (
        "initial values of lstm.ff_weight differ: it takes the 2nd seed of the sequence in run A and the 3rd in run B.")


def test_recorded_parameters_equal_returnns_checkpoint_bitwise(recorded: dict[str, Path]) -> None:
    import torch

    from repro_audit.audit.trace import Trace

    trace = Trace(recorded["baseline"])
    last = trace.steps[-1]["step"]
    values = trace.values(last)
    assert values is not None
    checkpoint = torch.load(str(recorded["checkpoint"]) + ".002.pt", map_location="cpu", weights_only=True)
    state = checkpoint["model"]
    assert set(state) == set(trace.steps[-1]["parameters"])
    for name, tensor in state.items():
        recorded_value = values.get(f"parameters/{name}")
        assert recorded_value is not None, name
        assert recorded_value.dtype == tensor.numpy().dtype
        assert recorded_value.tobytes() == tensor.numpy().tobytes(), name
    assert not np.array_equal(values.get("parameters/embed.weight"),
                              trace.values(1).get("parameters/embed.weight"))  # type: ignore[union-attr]


def test_accumulated_micro_batches_are_one_step_and_match_returnns_checkpoint(tmp_path: Path) -> None:
    """accum_grad_multiple_step 2: RETURNN runs two forwards and backwards per optimizer update. A recorded
    step is one update with both micro-batches' data; after the last, the parameters are RETURNN's saved ones."""
    import torch

    from repro_audit.audit.trace import Trace

    trace_path, checkpoint = tmp_path / "accum.trace", tmp_path / "model" / "model"
    code, out, err = run_cli("record", str(FIXTURES / "torch_baseline.yaml"), "-o", str(trace_path), "--steps", "2",
                             "--values", "all", "--set", "params.accum_grad_multiple_step=2",
                             "--set", f"params.model={checkpoint}", "-q")
    assert code == 0, out + err
    trace = Trace(trace_path)
    assert [(s["step"], s["micro_batches"], s["update"]["global_train_step"]) for s in trace.steps] == [(1, 2, 1),
                                                                                                       (2, 2, 3)]
    tensors = trace.steps[0]["batch"]["tensors"]
    assert tensors["seq_tags"]["hash"] != tensors["micro_batch2/seq_tags"]["hash"]  # two batches, other sequences
    values = trace.values(2)
    assert values is not None
    state = torch.load(str(checkpoint) + ".001.pt", map_location="cpu", weights_only=True)["model"]
    for name, tensor in state.items():
        assert values.get(f"parameters/{name}").tobytes() == tensor.numpy().tobytes(), name  # type: ignore[union-attr]


def test_losses_added_after_a_pretrain_epoch_change_the_graph_from_then_on_and_no_shared_number(
        recorded: dict[str, Path], tmp_path: Path) -> None:
    """Like the seed's pretrain construction_algo: the zero-scaled losses per head come in at epoch 2 (step 4).
    Epoch 1 is bitwise the baseline; from epoch 2 the graph and the loss terms differ, and since RETURNN leaves
    zero-scaled losses out of its total, no gradient, update or parameter does."""
    report = tmp_path / "r.json"
    code, out, err = run_cli("compare", str(recorded["baseline"]), str(recorded["pretrain"]), "-q", "--json",
                             str(report))
    assert code == 1, out + err
    found = [d for d in _walk(_divergences(report)) if d["category"] not in ("config", "code", "environment")]
    assert found and min(d["step"] for d in found if d["step"] is not None) == 4
    categories = {d["category"] for d in found}
    assert "graph" in categories
    assert not categories & {"gradients", "optimizer", "parameters", "initialisation", "random_draws", "data"}
    terms = {d["name"].split()[-1] for d in found if d["category"] == "loss_terms"}
    assert {"aux_l0_h0", "aux_l0_h1", "aux_l1_h0", "aux_l1_h1"} <= terms


def test_learning_rate_control_state_is_in_every_step(recorded: dict[str, Path]) -> None:
    """RETURNN's learning-rate control, its score key and its per-epoch rates and scores, as the update's
    facts of each step (compared like any update setting)."""
    from repro_audit.audit.trace import Trace

    steps = Trace(recorded["baseline"]).steps
    update = steps[0]["update"]
    assert update["lr_control"].startswith("ConstantLearningRate(default_learning_rate=0.01, ")  # the default
    assert update["lr_control_error_key"] is None  # no epoch has scores yet
    assert update["lr_control_epochs"] == {"1": {"learning_rate": 0.01, "scores": {}}}
    assert all(step["update"]["lr_control_epochs"] == update["lr_control_epochs"] for step in steps[:3])
    # Epoch 2 knows epoch 1's train score of its one loss, ce, and decides by it.
    second = steps[3]["update"]
    assert second["lr_control_error_key"] == "train_loss_ce"
    assert set(second["lr_control_epochs"]["1"]["scores"]) == {"train_loss_ce"}


def test_returnn_config_and_its_imports_are_in_the_code_fingerprint(recorded: dict[str, Path]) -> None:
    from repro_audit.audit.trace import Trace

    environment = Trace(recorded["baseline"]).environment
    config_file = (FIXTURES / "tiny_lstm_torch.config").read_text(encoding="utf-8")
    assert environment["modules"]["__returnn_config__"]["path"] == "tiny_lstm_torch.config"
    assert environment["sources"]["__returnn_config__"] == config_file
    assert environment["modules"]["tiny_model"]["path"] == "tiny_model.py"
    assert "class Model(rf.Module)" in environment["sources"]["tiny_model"]
    assert environment["returnn"]["version"] == returnn.__version__


def test_unsupported_returnn_backend_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "jax.config"
    config.write_text('#!rnn.py\nbackend = "jax"\ntask = "train"\n', encoding="utf-8")
    code, out, err = run_cli("record", str(config), "-o", str(tmp_path / "t.trace"), "-q")
    assert code == 2, out + err
    assert "RETURNN backend 'jax' is not supported yet (supported: torch, tensorflow-net-dict)" in err
    assert "Traceback" not in err

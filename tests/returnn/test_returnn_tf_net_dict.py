"""RETURNN's own TF net-dict engine (graph mode), recorded and compared: the seed's rows in its own engine.

Skipped only where RETURNN (or TensorFlow) cannot be imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli

pytest.importorskip("returnn", reason="RETURNN is not installed: pip install 'repro-audit[returnn]'")
pytest.importorskip("tree", reason="dm-tree (needed by RETURNN) is not installed: pip install 'repro-audit[returnn]'")
tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'repro-audit[tensorflow]'")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "returnn"


def _walk(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    every = []
    for divergence in found:
        every.append(divergence)
        every.extend(_walk(divergence.get("children") or []))
    return every


def _compare(a: Path, b: Path, report: Path) -> list[dict[str, Any]]:
    code, out, err = run_cli("compare", str(a), str(b), "-q", "--json", str(report))
    assert code == 1, out + err
    return json.loads(report.read_text(encoding="utf-8"))["divergences"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two-epoch baseline (with values and RETURNN's own checkpoints kept), its pretrain variant and the
    early-layer run: one recording each, shared by the tests."""
    folder = tmp_path_factory.mktemp("returnn_tf")
    traces = {"baseline": folder / "baseline.trace", "early": folder / "early.trace",
              "pretrain": folder / "pretrain.trace", "checkpoint": folder / "model" / "model"}
    code, out, err = run_cli("record", str(FIXTURES / "tf_baseline_epochs.yaml"), "-o", str(traces["baseline"]),
                             "--values", "all", "--set", f"params.model={traces['checkpoint']}", "-q")
    assert code == 0, out + err
    for name, config in (("early", "tf_early_layer.yaml"), ("pretrain", "tf_pretrain.yaml")):
        code, out, err = run_cli("record", str(FIXTURES / config), "-o", str(traces[name]), "-q")
        assert code == 0, out + err
    return traces


def test_simplified_zero_eval_layer_losses_change_the_graph_and_the_batches(tmp_path: Path) -> None:
    """The seed's simplified row: '0.0 * tf.reduce_sum(...)' eval layers with loss='as_is'. Their loss is
    zero, yet RETURNN batches a network with eval layers (recurrent) as separate sequences, where the
    baseline's feed-forward network gets its sequences concatenated: shared numbers change."""
    report = tmp_path / "r.json"
    code, out, err = run_cli("diff", str(FIXTURES / "tf_baseline.yaml"), str(FIXTURES / "tf_zero_aux_simplified.yaml"),
                             "-q", "--json", str(report))
    assert code == 1, out + err
    found = _walk(json.loads(report.read_text(encoding="utf-8"))["divergences"])
    categories = {d["category"] for d in found}
    assert {"graph", "data", "parameters"} <= categories
    terms = {d["name"].split()[-1] for d in found if d["category"] == "loss_terms"}
    assert {"aux_l0", "aux_l1"} <= terms
    graph = next(d for d in found if d["category"] == "graph" and d["step"] == 1)
    assert "None of them feeds the model's shared forward pass" in graph["explanation"]
    data = next(d for d in found if d["category"] == "data")
    assert "data" in data["name"]


def test_layer_created_earlier_shifts_op_seeds(recorded: dict[str, Path], tmp_path: Path) -> None:
    from repro_audit.audit.trace import Trace

    found = _walk(_compare(recorded["baseline"], recorded["early"], tmp_path / "r.json"))
    embed = next(d for d in found if d["category"] == "initialisation" and d["name"] == "embed.W")
    seeds = {t: {d["name"]: d["seed"][1] for d in Trace(recorded[t]).initialisation["draws"]}
             for t in ("baseline", "early")}
    # RETURNN hands out the layer seeds in creation order: the early layer takes the one embed had.
    assert seeds["early"]["early/W/Initializer/random_uniform/RandomUniform"] == \
        seeds["baseline"]["embed/W/Initializer/random_uniform/RandomUniform"]
    a, b = (seeds[t]["embed/W/Initializer/random_uniform/RandomUniform"] for t in ("baseline", "early"))
    assert embed["explanation"] == (
        "Parameter embed.W got other initial values: the layer early, created before it only in run B, moves the op "
        "seeds of the shared layers created after it (RETURNN seeds each layer's random ops from its network's "
        f"random state, in creation order); its op seed is {a} in run A and {b} in run B. 3 tensors created after "
        "it are shifted as well, and the random ops of training in embed, l0 draw from other seeds from step 1 "
        "(dropout masks).")


def test_dropout_draws_are_in_the_step_ledger_with_their_op_seeds(recorded: dict[str, Path], tmp_path: Path) -> None:
    """RETURNN's dropout is a stateful RandomUniform per layer, seeded by RETURNN in creation order: each
    step's ledger lists it with its op seed pair and how often its kernel ran before; a layer created
    earlier moves those seeds, so the masks differ from step 1."""
    from repro_audit.audit.trace import Trace

    steps = Trace(recorded["baseline"]).steps
    draws = steps[0]["random_draws"]
    assert [(d["op"], d["module"], d["phase"], d["generator"]) for d in draws] == [
        ("RandomUniform", "embed", "forward", "tf-op-seed"), ("RandomUniform", "l0", "forward", "tf-op-seed")]
    assert all("dropout" in d["stream"] and d["count"] > 0 for d in draws)
    assert [d["seed_state"][2] for d in steps[1]["random_draws"]] == [1, 1]  # each kernel ran once before
    found = _walk(_compare(recorded["baseline"], recorded["early"], tmp_path / "r.json"))
    shifted = [d for d in found if d["category"] == "random_draws"]
    assert shifted and min(d["step"] for d in shifted) == 1


def test_layer_outputs_the_step_computes_are_recorded(recorded: dict[str, Path]) -> None:
    """Every layer output the training step computes, as a module output; the softmax of `output` is not
    computed in training (its loss takes the logits), and fetching it would add ops to the run."""
    from repro_audit.audit.trace import Trace

    for step in Trace(recorded["baseline"]).steps:
        outputs = {entry["module"]: entry["summary"] for entry in step["module_outputs"]}
        assert sorted(outputs) == ["embed", "l0", "l1"], step["step"]
        assert all(summary["shape"][-1] == 8 and summary["nan"] == 0 for summary in outputs.values())


def test_pretrain_construction_algo_is_the_baseline_until_the_losses_come_back(recorded: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    """The seed's pretrain variant: RETURNN's `pretrain` with a `construction_algo` that deletes the
    zero-scaled auxiliary losses from the network of epoch 1. That epoch (steps 1-3) is bitwise the baseline
    in every category; at epoch 2 RETURNN builds the full network: a changed graph and the losses."""
    from repro_audit.audit.trace import Trace

    found = _walk(_compare(recorded["baseline"], recorded["pretrain"], tmp_path / "r.json"))
    in_training = [d for d in found if d["category"] not in ("config", "code", "environment")]
    assert in_training and min(d["step"] for d in in_training) == 4
    assert not [d for d in found if d["category"] == "initialisation"]
    graph = next(d for d in found if d["category"] == "graph")
    assert graph["step"] == 4 and "None of them feeds the model's shared forward pass" in graph["explanation"]
    terms = {d["name"].split()[-1] for d in found if d["category"] == "loss_terms"}
    assert {"aux_l0_h0", "aux_l0_h1", "aux_l1_h0", "aux_l1_h1"} <= terms
    # RETURNN builds the full network in a new session: every dropout stream starts anew, in run B only.
    restart = next(d for d in found if d["cause"] == "random_stream_shift")
    assert restart["step"] == 4 and restart["explanation"].startswith(
        "At step 4 RETURNN built a new network in a new session in run B only, and a new session starts every "
        "random op's stream anew: RandomUniform in embed ran 3 times before in run A and 0 in run B")
    # From epoch 3, RETURNN's learning-rate control decides by other scores: epoch 2 had the auxiliary ones.
    control = next(d for d in found if d["cause"] == "lr_control_change")
    assert control["step"] == 7
    assert control["explanation"].startswith("RETURNN's learning-rate control holds other state from step 7: it "
                                             "decides by the score train_score in run A and train_score_output in "
                                             "run B; epoch 2's score ")
    assert "epoch 2's score train_score_aux_l0_h0 is absent in run A and " in control["explanation"]
    # The pretrain network of epoch 1 and the full one of epoch 2: the graph is stored for both.
    assert Trace(recorded["pretrain"]).structure["graph_steps"] == [1, 4]
    assert Trace(recorded["baseline"]).structure["graph_steps"] == [1]


def test_accumulated_gradients_apply_in_every_second_run(tmp_path: Path) -> None:
    """accum_grad_multiple_step 2: RETURNN's updater adds two runs' gradients up and applies them in the
    second. Each run is a recorded step saying which micro-batch it is and whether the update applied: the
    variables after the first are the initial ones, after the second RETURNN's checkpoint."""
    from repro_audit.audit.trace import Trace

    trace_path, checkpoint = tmp_path / "accum.trace", tmp_path / "model" / "model"
    code, out, err = run_cli("record", str(FIXTURES / "tf_baseline.yaml"), "-o", str(trace_path), "--steps", "1",
                             "--values", "all", "--set", "params.accum_grad_multiple_step=2",
                             "--set", f"params.model={checkpoint}", "-q")
    assert code == 0, out + err
    trace = Trace(trace_path)
    assert [(s["update"]["micro_batch"], s["update"]["update_applied"]) for s in trace.steps] == [(1, False), (2, True)]
    initial = {t["name"]: t["summary"]["hash"] for t in trace.initialisation["tensors"]}
    assert {name: p["hash"] for name, p in trace.steps[0]["parameters"].items()} == initial
    values = trace.values(2)
    assert values is not None
    reader = tf.train.load_checkpoint(str(checkpoint) + ".001")
    for name in trace.steps[1]["parameters"]:
        assert values.get(f"parameters/{name}").tobytes() == reader.get_tensor(name.replace(".", "/")).tobytes()


def test_recorded_variables_equal_returnns_checkpoint_bitwise(recorded: dict[str, Path]) -> None:
    from repro_audit.audit.trace import Trace

    trace = Trace(recorded["baseline"])
    last = trace.steps[-1]
    values = trace.values(last["step"])
    assert values is not None
    reader = tf.train.load_checkpoint(str(recorded["checkpoint"]) + ".003")
    assert set(last["parameters"]) == {"embed.W", "embed.b", "l0.W", "l0.b", "l1.W", "l1.b", "output.W",
                                       "output.b"}
    for name in last["parameters"]:
        saved = reader.get_tensor(name.replace(".", "/"))
        kept = values.get(f"parameters/{name}")
        assert kept is not None and kept.dtype == saved.dtype, name
        assert kept.tobytes() == saved.tobytes(), name

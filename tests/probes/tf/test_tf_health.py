"""The `health` key of TensorFlow step records (repro_audit.probes.tf.health) and `repro-audit health` on TF runs.

Numbers are checked against a plain TF step (GradientTape on the recorded initial values and batch) and
numpy; every fixture case of fixtures/configs/tf/health is recorded in eager and function mode and judged
by the command, whose findings must be the torch fixtures' (the rules are framework-neutral). Runs are
recorded in this process (conftest) and the command reads the trace folders; two cases go through the
command from their config, as a user runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli
from repro_audit.audit.cli_health import health_command  # noqa: F401  (registers `health`)
from repro_audit.audit.trace import Trace

pytest.importorskip("tensorflow")

HEALTH = Path(__file__).resolve().parents[3] / "fixtures" / "configs" / "tf" / "health"
MODES = ["function", "eager"]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def record_case(record_fixture: Callable[..., Trace]) -> Callable[..., Trace]:
    """Record a case of fixtures/configs/tf/health in this process: `record_case("dead_relu", "params.mode=eager")`."""

    def record(name: str, *overrides: str, steps: int | None = None, values: str | None = None) -> Trace:
        label = "_".join([name, *[o.split("=")[-1] for o in overrides]])
        return record_fixture(f"health/{name}", *overrides, steps=steps, values=values, label=label)

    return record


# -- numbers against plain TF and numpy ------------------------------------------------------------------


def plain_step(trace: Trace) -> dict[str, Any]:
    """healthy_mlp's step 1 redone with plain TF from the recorded initial values and batch."""
    import tensorflow as tf

    initial, first = trace.values(0), trace.values(1)
    assert initial is not None and first is not None
    weights = {name: tf.Variable(initial.get(f"initial/{name}")) for name in
               ("0.kernel", "0.bias", "2.kernel", "2.bias", "4.kernel", "4.bias")}
    x, y = first.get("batch/0"), first.get("batch/1")
    with tf.GradientTape() as tape:
        h1 = tf.tanh(x @ weights["0.kernel"] + weights["0.bias"])
        h3 = tf.nn.relu(h1 @ weights["2.kernel"] + weights["2.bias"])
        logits = h3 @ weights["4.kernel"] + weights["4.bias"]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = dict(zip(weights, tape.gradient(loss, list(weights.values()))))
    return {"loss": float(loss), "h1": h1.numpy(), "h3": h3.numpy(),
            "grads": {name: g.numpy() for name, g in grads.items()},
            "after": {name: w.numpy() - 0.05 * grads[name].numpy() for name, w in weights.items()}}


@pytest.mark.parametrize("mode", MODES)
def test_step_one_numbers_match_plain_tf(record_case: Callable[..., Trace], mode: str) -> None:
    trace = record_case("healthy_mlp", f"params.mode={mode}", steps=1, values="first")
    health = trace.step(1)["health"]
    plain = plain_step(trace)
    for layer in ("0", "2", "4"):
        grads = [plain["grads"][f"{layer}.kernel"], plain["grads"][f"{layer}.bias"]]
        after = [plain["after"][f"{layer}.kernel"], plain["after"][f"{layer}.bias"]]
        stats = health["layers"][layer]
        assert stats["type"] == "Dense" and stats["params"] == sum(g.size for g in grads) == stats["grad_params"]
        assert stats["grad_norm"] == pytest.approx(math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                                                 for g in grads)), rel=1e-4)
        assert stats["grad_min"] == pytest.approx(min(float(g.min()) for g in grads), rel=1e-4)
        assert stats["grad_max"] == pytest.approx(max(float(g.max()) for g in grads), rel=1e-4)
        assert stats["grad_max_abs"] == pytest.approx(max(float(np.abs(g).max()) for g in grads), rel=1e-4)
        assert stats["grad_zero_share"] == sum(int(np.sum(g == 0)) for g in grads) / stats["params"]
        assert stats["weight_norm"] == pytest.approx(math.sqrt(sum(float(np.sum(w.astype(np.float64) ** 2))
                                                                   for w in after)), rel=1e-5)
    assert health["total"]["grad_norm"] == pytest.approx(math.sqrt(sum(
        health["layers"][layer]["grad_norm"] ** 2 for layer in ("0", "2", "4"))), rel=1e-9)
    activations = {entry["module"]: entry for entry in health["activations"]}
    assert list(activations) == ["0", "1", "2", "3", "4"]  # execution order; the Sequential's output is "4"'s
    tanh, relu = activations["1"], activations["3"]
    assert (tanh["type"], tanh["kind"], relu["type"], relu["kind"]) == ("Activation", "tanh", "ReLU", "relu")
    assert tanh["saturated_share"] == float(np.mean(np.abs(plain["h1"]) > 0.99))
    assert tanh["numel"] == plain["h1"].size and tanh["std"] == pytest.approx(float(plain["h1"].std()), rel=1e-4)
    assert tanh["mean"] == pytest.approx(float(plain["h1"].mean()), rel=1e-4, abs=1e-7)
    dead = int(np.sum(plain["h3"].max(axis=0) <= 0))
    assert (relu["units"], relu["dead_units"], relu["dead_share"]) == (64, dead, dead / 64)
    assert (relu["min"], relu["max"]) == pytest.approx((0.0, float(plain["h3"].max())), rel=1e-5)
    assert activations["0"]["kind"] is None and "dead_share" not in activations["0"]
    initial = health["initial_loss"]["ce"]
    assert initial["value"] == pytest.approx(plain["loss"], rel=1e-5)
    assert (initial["num_classes"], initial["expected"], initial["source"]) == (10, math.log(10), "declared")
    memory = health["memory"]
    assert memory["rss"] > 0 and memory["rss_source"] in ("statm", "peak")
    assert memory["cuda_reserved"] is None and set(memory) == {"rss", "rss_source", "heap_in_use",
                                                               "cuda_allocated", "cuda_reserved"}


def test_record_has_torchs_shape(record_case: Callable[..., Trace]) -> None:
    trace = record_case("dead_relu", steps=2)
    first, second = (trace.step(n)["health"] for n in (1, 2))
    assert set(first) == {"layers", "total", "activations", "memory", "notes", "initial_loss"}
    assert set(second) == {"layers", "total", "activations", "memory", "notes"}
    layer_keys = {"params", "weight_norm", "grad_norm", "grad_min", "grad_max", "grad_max_abs", "grad_zero_share",
                  "grad_params", "type"}
    assert all(set(stats) == layer_keys for stats in first["layers"].values())
    assert set(first["total"]) == layer_keys - {"type"}
    dead = next(entry for entry in first["activations"] if entry["module"] == "1")
    assert set(dead) == {"module", "call", "type", "kind", "numel", "min", "max", "mean", "std", "units",
                         "dead_units", "dead_share"}
    assert first["layers"]["0"]["grad_zero_share"] == 1.0 and first["layers"]["0"]["grad_norm"] == 0.0


def test_capture_health_off_writes_no_health(record_case: Callable[..., Trace]) -> None:
    trace = record_case("dead_relu", "capture.health=false", steps=1)
    assert "health" not in trace.step(1)
    trace = record_case("dead_relu", "capture.module_outputs=false", steps=1)
    health = trace.step(1)["health"]
    assert health["activations"] == [] and health["layers"]["0"]["grad_norm"] == 0.0
    assert any("capture.module_outputs is off" in note for note in health["notes"])


def test_kinds_from_ops_layer_functions_and_pass_through() -> None:
    """Function-mode kinds: by layer type, by activation function, by the op behind a custom layer's
    output, and through a Dropout (relu only) or a layer that hands its input back."""
    import keras
    import tensorflow as tf

    from repro_audit.probes.tf.capture import Capture
    from repro_audit.probes.tf.health import activation_counts, activation_outputs

    class Block(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return tf.nn.relu(x - 100.0)  # every unit dead

    layers = [keras.layers.Dense(8, activation="sigmoid"), keras.layers.Dense(8, activation="gelu"),
              Block(), keras.layers.Dropout(0.5), keras.layers.Dense(8), keras.layers.Activation("tanh"),
              keras.layers.Dropout(0.5)]
    model = keras.Sequential([keras.Input((4,)), *layers])
    x = tf.random.stateless_normal((16, 4), seed=[1, 2])
    model(x)
    capture = Capture()
    with capture:
        found: dict[str, Any] = {}

        def traced(x: Any) -> Any:
            capture.reset()
            capture.active = True
            try:
                model(x, training=False)
            finally:
                capture.active = False
            found["outputs"] = activation_outputs(capture.layer_calls)
            return activation_counts(found["outputs"])

        counts = tf.function(traced, autograph=False)(x).numpy()
    kinds = [(output.type, output.kind) for output in found["outputs"]]
    # Dropout outside training returns its input: listed once, under the Dropout, with the input's kind.
    assert kinds == [("Dense", "sigmoid"), ("Dense", "relu"), ("Dropout", "relu"), ("Dense", None),
                     ("Dropout", "tanh")]
    assert counts.tolist()[2] == [8, 8]  # Block's 8 units, all never positive


# -- every fixture case through `repro-audit health` ----------------------------------------------------

CASES = [
    ("saturated_tanh", "saturated activations:", "1 (Activation)  step 1:"),
    ("dead_relu", "dead units:", "1 (ReLU)  step 1: 64 of 64 units (100%) never positive"),
    ("exploding_gradients", "exploding gradients:", "0 (Dense)  step 1: gradient norm"),
    ("wrong_initial_loss", "initial loss far from -log(1/C):", "ce  step 1: step-1 loss"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, title, line", CASES, ids=[case for case, _, _ in CASES])
def test_each_problem_is_flagged(record_case: Callable[..., Trace], case: str, title: str, line: str,
                                 mode: str) -> None:
    trace = record_case(case, f"params.mode={mode}")
    code, output = run_cli("health", str(trace.path), "-q")
    assert code == 1, output
    assert "anomal" in output.splitlines()[0] and f"  {title}" in output and line in output


def test_wrong_initial_loss_numbers(record_case: Callable[..., Trace]) -> None:
    code, output = run_cli("health", str(record_case("wrong_initial_loss").path), "-q")
    joined = " ".join(line.strip() for line in output.splitlines())  # a finding is wrapped to 80 columns
    assert code == 1 and "vs -log(1/10) = 2.3" in joined and "classes declared by the recipe" in joined, output
    # Undeclared, the class count comes from the fused cross entropy's logits in the step-1 op graph.
    undeclared = record_case("wrong_initial_loss", "params.declare_classes=false")
    code, output = run_cli("health", str(undeclared.path), "-q")
    joined = " ".join(line.strip() for line in output.splitlines())
    assert code == 1 and "classes inferred from SparseSoftmaxCrossEntropyWithLogits input [64, 10]" in joined, output


@pytest.mark.parametrize("mode", MODES)
def test_healthy_mlp_is_healthy(record_case: Callable[..., Trace], mode: str) -> None:
    trace = record_case("healthy_mlp", f"params.mode={mode}")
    code, output = run_cli("health", str(trace.path), "-q")
    assert code == 0, output
    assert output.splitlines()[0] == "health of 'healthy_mlp' (6 steps): healthy"


def test_heap_is_read_at_steps_1_to_8_then_every_8th_and_the_run_stays_healthy(
        record_case: Callable[..., Trace]) -> None:
    """mallinfo2 walks every malloc arena (3.3 ms of a 45 ms Keras step): read at steps 1-8, then every 8th;
    the memory rule reads growth per step between readings, so the gaps raise nothing."""
    trace = record_case("healthy_mlp", steps=16)  # the recipe's 16 batches
    read = [record["step"] for record in trace.steps if record["health"]["memory"]["heap_in_use"] is not None]
    assert read == [1, 2, 3, 4, 5, 6, 7, 8, 16]
    assert all(record["health"]["memory"]["rss"] > 0 for record in trace.steps)  # RSS at every step
    code, output = run_cli("health", str(trace.path), "-q")
    assert code == 0 and output.splitlines()[0] == "health of 'healthy_mlp' (16 steps): healthy", output


def test_leaking_outputs_grow_memory_and_the_fix_does_not(record_case: Callable[..., Trace]) -> None:
    code, output = run_cli("health", str(record_case("leaking_loss").path), "-q")
    # The heap shows it where TensorFlow takes tensors from malloc; RSS where its BFC allocator pools them.
    assert code == 1 and "  memory growing every step:" in output, output
    assert "CPU heap in use  step 3:" in output or "process RSS  step 3:" in output, output
    code, output = run_cli("health", str(record_case("leaking_loss", "params.keep_outputs=false").path), "-q")
    assert code == 0, output


def test_graph_mode_layers_are_scopes_and_outputs_are_named(record_case: Callable[..., Trace]) -> None:
    trace = record_case("graph_dead_relu", values="first")
    code, output = run_cli("health", str(trace.path), "-q")
    assert code == 1, output
    assert "1 (Relu)  step 1: 64 of 64 units (100%) never positive" in output
    assert "0 (VariableScope)  step 1: every gradient is exactly 0" in output
    health = trace.step(1)["health"]
    assert [(e["module"], e["kind"]) for e in health["activations"]] == [("1", "relu"), ("3", "relu")]
    second = trace.values(1).get("module_outputs/3#0")
    dead = int(np.sum(second.max(axis=0) <= 0))
    assert health["activations"][1]["dead_units"] == dead
    assert health["layers"]["4"]["grad_norm"] == pytest.approx(math.sqrt(sum(
        float(np.sum(trace.values(1).get(f"gradients/4.{name}").astype(np.float64) ** 2))
        for name in ("kernel", "bias"))), rel=1e-5)


def test_graph_mode_tanh_saturates(record_case: Callable[..., Trace]) -> None:
    trace = record_case("graph_dead_relu", "params.first_bias=0.0", "params.activation=tanh",
                        "params.weight_std=1.0", steps=1)
    shares = {e["module"]: e.get("saturated_share") for e in trace.step(1)["health"]["activations"]}
    assert shares["1"] > 0.25 and shares["3"] > 0.25


def test_the_command_from_a_config() -> None:
    code, output = run_cli("health", str(HEALTH / "healthy_mlp.yaml"), "-q", "--steps", "3")
    assert code == 0 and output.splitlines()[0] == "health of 'healthy_mlp' (3 steps): healthy", output
    code, output = run_cli("health", str(HEALTH / "dead_relu.yaml"), "-q", "--set", "params.mode=eager")
    assert code == 1 and "1 (ReLU)  step 1: 64 of 64 units (100%)" in output, output

"""`step_health` on real small torch models: the numbers of the `health` key, checked against plain torch.

The probe writes a compact record; the trace reader completes it from the step's summaries
(`repro_audit.audit.trace.health_fill`). `health_of` does both, as a recorded and read trace would.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from repro_audit.audit.trace.health_fill import complete_health, layer_of, module_types
from repro_audit.audit.trace.step_lines import dumps_step
from repro_audit.probes.torch.health import memory_usage, step_health
from repro_audit.probes.torch.modules import ModuleTracker, module_tree
from repro_audit.probes.torch.output_probe import OutputProbe
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder
from repro_audit.probes.torch.tensors import summarize


def one_step(model: nn.Module, x: torch.Tensor, *, probe_outputs: bool = True,
             loss_fn=lambda out: out.pow(2).mean()) -> tuple[ModuleTracker, float]:  # type: ignore[no-untyped-def]
    """Forward and backward with the module tracker and its output probe on, as the recorder runs a step."""
    tracker = ModuleTracker(model, probe=OutputProbe(health=True) if probe_outputs else None)
    tracker.start_step()
    loss = loss_fn(model(x))
    loss.backward()
    tracker.stop()
    tracker.remove()
    return tracker, float(loss.detach())


def health_of(tracker: ModuleTracker, model: nn.Module, parameters: list | None = None, *, step: int = 2,
              **options: object) -> dict:
    """The step's `health` as a trace reader sees it: the probe's compact record, completed from the
    gradient, parameter and module-output summaries the recorder writes beside it."""
    parameters = list(model.named_parameters()) if parameters is None else parameters
    grads = [(name, p.grad) for name, p in parameters if p.grad is not None]
    by_name = dict(zip([name for name, _ in grads], summarize([g for _, g in grads])))
    record = {"gradients": {name: by_name.get(name) for name, _ in parameters},
              "parameters": dict(zip([name for name, _ in parameters], summarize([p.detach() for _, p in parameters]))),
              "module_outputs": tracker.summaries(),
              "health": step_health(tracker.calls, step=step, **options)}  # type: ignore[arg-type]
    assert "layers" not in record["health"] and "activations" not in record["health"]  # written compact
    health = complete_health(record, module_types({"modules": module_tree(model)}))
    assert health is not None
    return health


def by_module(health: dict) -> dict:
    return {entry["module"]: entry for entry in health["activations"]}


def test_layer_gradients_and_weights_match_torch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(True)
    tracker, _ = one_step(model, torch.randn(16, 4))
    with torch.no_grad():
        model[2].weight.grad[0].zero_()  # 8 exact zeros out of 27 in layer "2"
    health = health_of(tracker, model)
    for layer in ("0", "2"):
        params = [p for name, p in model.named_parameters() if layer_of(name) == layer]
        grads = torch.cat([p.grad.reshape(-1) for p in params])
        stats = health["layers"][layer]
        assert stats["grad_norm"] == pytest.approx(float(grads.norm()), rel=1e-6)
        assert stats["grad_min"] == float(grads.min()) and stats["grad_max"] == float(grads.max())
        assert stats["grad_max_abs"] == float(grads.abs().max())
        assert stats["weight_norm"] == pytest.approx(float(torch.cat([p.detach().reshape(-1) for p in params]).norm()),
                                                     rel=1e-6)
        assert stats["type"] == "Linear"
    assert health["layers"]["2"]["grad_zero_share"] == pytest.approx(8 / 27)
    everything = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert health["total"]["grad_norm"] == pytest.approx(float(everything.norm()), rel=1e-6)
    assert health["total"]["params"] == 4 * 8 + 8 + 8 * 3 + 3
    assert "initial_loss" not in health  # step 1 only


def test_parameter_without_gradient_and_nonfinite_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    unused = nn.Linear(3, 3)  # a head the loss never reaches
    tracker, _ = one_step(model, torch.randn(16, 4))
    with torch.no_grad():
        model[0].weight.grad[0, 0] = float("nan")
    parameters = list(model.named_parameters()) + [(f"unused.{n}", p) for n, p in unused.named_parameters()]
    health = health_of(tracker, model, parameters)
    assert health["layers"]["unused"]["grad_norm"] is None and health["layers"]["unused"]["weight_norm"] > 0
    assert math.isnan(health["layers"]["0"]["grad_norm"]) and math.isnan(health["layers"]["0"]["grad_min"])
    assert math.isnan(health["total"]["grad_max"])  # NaN is never hidden behind a finite extreme


def test_tanh_and_sigmoid_saturation_shares_are_exact() -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.Tanh())
    sigmoid = nn.Sigmoid()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
    x = torch.tensor([[-5.0], [-0.1], [0.0], [0.5], [3.0], [10.0], [-2.0], [2.5]])
    # |tanh| > 0.99 exactly where |x| > atanh(0.99) = 2.65: -5, 3, 10 -> 3 of 8.
    tracker, _ = one_step(model, x)
    health = health_of(tracker, model)
    tanh = by_module(health)["1"]
    assert tanh["kind"] == "tanh" and tanh["saturated_share"] == pytest.approx(3 / 8)
    assert tanh["min"] == pytest.approx(math.tanh(-5.0)) and tanh["max"] == pytest.approx(math.tanh(10.0))
    expected = torch.tanh(x)
    assert tanh["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert tanh["std"] == pytest.approx(float(expected.std(unbiased=False)), rel=1e-5)
    # sigmoid(y) < 0.01 or > 0.99 where |y| > 4.595: -5 and 10 -> 2 of 8.
    tracker, _ = one_step(sigmoid, x.requires_grad_(True))
    assert by_module(health_of(tracker, sigmoid))[""]["saturated_share"] == pytest.approx(2 / 8)


def test_dead_units_are_features_never_positive_in_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # units 0, 1, 2 can never fire
    tracker, _ = one_step(model, torch.randn(32, 5, 6))  # (batch, positions, features): units on the last dim
    relu = by_module(health_of(tracker, model))["1"]
    assert (relu["units"], relu["dead_units"], relu["dead_share"]) == (8, 3, 3 / 8)


def test_functional_activations_are_recognised_from_the_autograd_node() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Linear(4, 16)
            self.dropout = nn.Dropout(0.1)
            self.down = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.down(self.dropout(torch.relu(self.up(x)))))

    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():
        block.up.bias[:4] = -100.0
    tracker, _ = one_step(block, torch.randn(64, 4))
    outputs = by_module(health_of(tracker, block))
    assert outputs[""]["kind"] == "tanh" and "saturated_share" in outputs[""]  # the block ends in torch.tanh
    assert outputs["dropout"]["kind"] == "relu"  # Dropout of F.relu: dead units survive the scaling
    assert outputs["dropout"]["dead_units"] == 4
    assert outputs["up"]["kind"] is None and "dead_share" not in outputs["up"]


def test_an_output_shared_by_nested_modules_is_described_once_under_the_innermost() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    tracker, _ = one_step(model, torch.randn(8, 4))
    names = [entry["module"] for entry in health_of(tracker, model)["activations"]]
    assert names == ["0", "1.0", "1.1"]  # not "" nor "1": both returned 1.1's tensor


def test_without_module_outputs_there_is_a_note_and_no_activations() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    tracker, _ = one_step(model, torch.randn(8, 4), probe_outputs=False)
    health = health_of(tracker, model)
    assert health["activations"] == []
    assert any("capture.module_outputs is off" in note for note in health["notes"])


def test_initial_loss_records_declared_class_counts_at_step_1() -> None:
    model = nn.Linear(4, 5)
    tracker, loss = one_step(model, torch.randn(8, 4))
    declared = step_health(tracker.calls, step=1, loss_terms={"ce": loss, "aux": 0.5}, num_classes={"ce": 5})
    assert declared["initial_loss"]["ce"] == {"value": loss, "num_classes": 5, "expected": math.log(5),
                                              "source": "declared"}
    assert declared["initial_loss"]["aux"]["expected"] is None
    everywhere = step_health(tracker.calls, step=1, loss_terms={"ce": loss}, num_classes=5)
    assert everywhere["initial_loss"]["ce"]["num_classes"] == 5
    bad = step_health(tracker.calls, step=1, loss_terms={"ce": loss}, num_classes={"ce": 1, "nope": 3})
    assert bad["initial_loss"]["ce"]["num_classes"] is None
    assert any("integer >= 2" in note for note in bad["notes"]) and any("'nope'" in note for note in bad["notes"])


def test_memory_is_read_without_starting_cuda() -> None:
    memory = memory_usage()
    assert memory["rss"] > 10 * 2**20 and memory["rss_source"] in ("statm", "peak")
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        assert memory["cuda_allocated"] is None and memory["cuda_reserved"] is None
    before = memory_usage()["heap_in_use"]
    if before is None:
        pytest.skip("no glibc mallinfo2 here")
    kept = torch.ones(8 * 2**20 // 4)  # 8 MiB of live tensor memory
    assert memory_usage()["heap_in_use"] - before >= 8 * 2**20
    del kept


def test_a_recorded_step_read_back_gives_the_torch_numbers() -> None:
    """The recorder writes health compact; completed from the record as written (through JSON), per-layer
    and per-output statistics equal plain torch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Dropout(0.2),
                          nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchStepRecorder(model, optimizer, capture={"graph": False, "random_draws": False},
                                 weight_of=lambda _: 1.0, ledger=RandomLedger(module_of=lambda: None))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    with torch.no_grad():
        hidden = model[3](model[2](model[1](model[0](x))))  # the Tanh's output (no step is being recorded)
    recorder.begin_step(1, (x, y))
    total = recorder.combine_loss({"ce": nn.functional.cross_entropy(model(x), y)})
    recorder.backward(total)
    recorder.after_backward()
    optimizer.step()
    record = json.loads(dumps_step(recorder.end_step()))
    recorder.close()
    assert set(record["health"]) == {"described_outputs", "activation_kinds", "memory", "notes", "initial_loss"}
    health = complete_health(record, module_types({"modules": module_tree(model)}))
    assert health is not None
    for layer in ("0", "2", "5"):
        params = [p for name, p in model.named_parameters() if layer_of(name) == layer]
        grads = torch.cat([p.grad.reshape(-1) for p in params])
        stats = health["layers"][layer]
        assert stats["grad_norm"] == pytest.approx(float(grads.norm()), rel=1e-5)
        assert (stats["grad_min"], stats["grad_max"]) == (float(grads.min()), float(grads.max()))
        assert stats["weight_norm"] == pytest.approx(float(torch.cat([p.detach().reshape(-1) for p in params]).norm()),
                                                     rel=1e-5)  # after the update, as the record's parameters
        assert stats["type"] == "Linear" and stats["params"] == grads.numel()
    outputs = by_module(health)
    assert [entry["module"] for entry in health["activations"]] == ["0", "1", "2", "3", "4", "5"]
    assert outputs["1"]["kind"] == "relu"
    assert outputs["3"]["kind"] == "tanh" and outputs["3"]["type"] == "Tanh"
    assert outputs["3"]["saturated_share"] == pytest.approx(float((hidden.abs() > 0.99).float().mean()))
    assert outputs["3"]["mean"] == pytest.approx(float(hidden.mean()), abs=1e-6)
    assert outputs["3"]["std"] == pytest.approx(float(hidden.std(unbiased=False)), rel=1e-4)

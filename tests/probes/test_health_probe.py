"""`step_health` on real small torch models: the numbers of the `health` key, checked against plain torch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probes.torch.health import layer_of, memory_usage, step_health
from probes.torch.modules import ModuleTracker
from probes.torch.output_probe import OutputProbe
from probes.torch.random_ledger import RandomLedger
from probes.torch.step_recorder import TorchStepRecorder


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


def by_module(health: dict) -> dict:
    return {entry["module"]: entry for entry in health["activations"]}


def test_layer_gradients_and_weights_match_torch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(True)
    tracker, _ = one_step(model, torch.randn(16, 4))
    with torch.no_grad():
        model[2].weight.grad[0].zero_()  # 8 exact zeros out of 27 in layer "2"
    health = step_health(tracker.calls, list(model.named_parameters()), step=2)
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
    health = step_health(tracker.calls, parameters, step=2)
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
    health = step_health(tracker.calls, list(model.named_parameters()), step=2)
    tanh = by_module(health)["1"]
    assert tanh["kind"] == "tanh" and tanh["saturated_share"] == pytest.approx(3 / 8)
    assert tanh["min"] == pytest.approx(math.tanh(-5.0)) and tanh["max"] == pytest.approx(math.tanh(10.0))
    expected = torch.tanh(x)
    assert tanh["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert tanh["std"] == pytest.approx(float(expected.std(unbiased=False)), rel=1e-5)
    # sigmoid(y) < 0.01 or > 0.99 where |y| > 4.595: -5 and 10 -> 2 of 8.
    tracker, _ = one_step(sigmoid, x.requires_grad_(True))
    assert by_module(step_health(tracker.calls, [], step=2))[""]["saturated_share"] == pytest.approx(2 / 8)


def test_dead_units_are_features_never_positive_in_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # units 0, 1, 2 can never fire
    tracker, _ = one_step(model, torch.randn(32, 5, 6))  # (batch, positions, features): units on the last dim
    relu = by_module(step_health(tracker.calls, list(model.named_parameters()), step=2))["1"]
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
    outputs = by_module(step_health(tracker.calls, list(block.named_parameters()), step=2))
    assert outputs[""]["kind"] == "tanh" and "saturated_share" in outputs[""]  # the block ends in torch.tanh
    assert outputs["dropout"]["kind"] == "relu"  # Dropout of F.relu: dead units survive the scaling
    assert outputs["dropout"]["dead_units"] == 4
    assert outputs["up"]["kind"] is None and "dead_share" not in outputs["up"]


def test_an_output_shared_by_nested_modules_is_described_once_under_the_innermost() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    tracker, _ = one_step(model, torch.randn(8, 4))
    names = [entry["module"] for entry in step_health(tracker.calls, [], step=2)["activations"]]
    assert names == ["0", "1.0", "1.1"]  # not "" nor "1": both returned 1.1's tensor


def test_without_module_outputs_there_is_a_note_and_no_activations() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    tracker, _ = one_step(model, torch.randn(8, 4), probe_outputs=False)
    health = step_health(tracker.calls, list(model.named_parameters()), step=2)
    assert health["activations"] == []
    assert any("capture.module_outputs is off" in note for note in health["notes"])


def test_initial_loss_records_declared_class_counts_at_step_1() -> None:
    model = nn.Linear(4, 5)
    tracker, loss = one_step(model, torch.randn(8, 4))
    declared = step_health(tracker.calls, [], step=1, loss_terms={"ce": loss, "aux": 0.5}, num_classes={"ce": 5})
    assert declared["initial_loss"]["ce"] == {"value": loss, "num_classes": 5, "expected": math.log(5),
                                              "source": "declared"}
    assert declared["initial_loss"]["aux"]["expected"] is None
    everywhere = step_health(tracker.calls, [], step=1, loss_terms={"ce": loss}, num_classes=5)
    assert everywhere["initial_loss"]["ce"]["num_classes"] == 5
    bad = step_health(tracker.calls, [], step=1, loss_terms={"ce": loss}, num_classes={"ce": 1, "nope": 3})
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


def test_reusing_the_recorders_summaries_gives_the_same_numbers() -> None:
    """The recorder passes its own gradient, parameter and module-output summaries; nothing may change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Dropout(0.2),
                          nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchStepRecorder(model, optimizer, capture={"graph": False, "random_draws": False},
                                 weight_of=lambda _: 1.0, ledger=RandomLedger(module_of=lambda: None))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    recorder.begin_step(1, (x, y))
    total = recorder.combine_loss({"ce": nn.functional.cross_entropy(model(x), y)})
    recorder.backward(total)
    recorder.after_backward()
    optimizer.step()
    record = recorder.end_step()
    computed = step_health(recorder.tracker.calls, recorder.parameters, step=2)
    reused = step_health(recorder.tracker.calls, recorder.parameters, step=2,
                         gradient_summaries=record["gradients"], parameter_summaries=record["parameters"])
    recorder.close()
    for layer, stats in computed["layers"].items():
        for key, value in stats.items():
            assert reused["layers"][layer][key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float)
                                                    else value), (layer, key)
    assert len(computed["activations"]) == len(reused["activations"]) == 6
    for mine, theirs in zip(computed["activations"], reused["activations"]):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            assert theirs[key] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float)
                                   else value), (mine["module"], key)

"""Every draw is seen by the generator it moves, whatever asked for it (probes/torch/random_watch.py).

In-process recordings of small real models with the step recorder: step 1 under the full dispatch
capture, later steps with the generator watch only.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.functional import dropout as imported_dropout  # bound before any recording starts

from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder

CAPTURE = {"values": "none", "graph": True, "module_outputs": True, "random_draws": True,
           "nan_provenance": True, "term_attribution": True, "health": False}


class Aliased(torch.nn.Module):
    """Dropout through a name imported before recording: no wrapper of F.dropout could see it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imported_dropout(self.inner(x), 0.5, True)


class FusedAttention(torch.nn.Module):
    """Dropout inside scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, 2, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3).transpose(1, 2).reshape(batch, time, 8)


class HostNoise(torch.nn.Module):
    """numpy's and Python's global generators, drawn inside a module."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        jitter = float(np.random.rand()) + random.random()
        return self.scale(x) * jitter


class Model(torch.nn.Module):
    def __init__(self, part: torch.nn.Module) -> None:
        super().__init__()
        self.part = part
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.part(x))


def record_steps(part: torch.nn.Module, *, steps: int = 3, shape: tuple[int, ...] = (4, 8),
                 loss_noise: bool = False) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = Model(part)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ledger = RandomLedger(module_of=lambda: None)
    recorder = TorchStepRecorder(model, optimizer, capture=CAPTURE, weight_of=lambda name: 1.0, ledger=ledger)
    generator = torch.Generator().manual_seed(3)
    records = []
    try:
        for step in range(1, steps + 1):
            x = torch.randn(*shape, generator=generator)
            optimizer.zero_grad()
            recorder.begin_step(step, x)
            out = model(x)
            if loss_noise:
                out = F.dropout(out, 0.5)  # in the loss function, outside every module
            total = recorder.combine_loss({"mean": out.pow(2).mean()})
            recorder.backward(total)
            recorder.after_backward()
            optimizer.step()
            recorder.finish_graph()
            records.append(recorder.end_step())
    finally:
        recorder.close()
    return records


def places(record: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(d["module"], d["phase"], d["generator"], d["op"], d["count"]) for d in record["random_draws"]]


def test_an_aliased_dropout_is_seen_at_every_step_with_its_op_and_count() -> None:
    records = record_steps(Aliased())
    for record in records:
        assert places(record) == [("part", "forward", "cpu", "aten::bernoulli_", 32)], record["step"]
    offsets = [record["random_draws"][0]["offset_before"] for record in records]
    assert offsets[1] - offsets[0] == 32 and offsets[2] - offsets[1] == 32
    assert all(d["rng_after"] != d["rng_fingerprint"] for r in records for d in r["random_draws"])


def test_dropout_inside_fused_attention_is_seen_at_every_step() -> None:
    records = record_steps(FusedAttention(), shape=(2, 4, 8))
    for record in records:
        draws = record["random_draws"]
        assert [d["module"] for d in draws] == ["part"] and draws[0]["count"] == 2 * 2 * 4 * 4, record["step"]


def test_numpy_and_python_draws_in_a_module_are_named_by_their_generator_and_module() -> None:
    records = record_steps(HostNoise())
    for record in records:
        assert sorted((d["module"], d["generator"], d["op"]) for d in record["random_draws"]) == [
            ("part", "numpy", "numpy.random"), ("part", "python", "random")]
        assert all(d["count"] is None for d in record["random_draws"])


def test_draws_outside_every_module_belong_to_the_forward_phase_of_the_loss() -> None:
    records = record_steps(torch.nn.Identity(), loss_noise=True)
    for record in records:
        assert places(record) == [(None, "forward", "cpu", "aten::bernoulli_", 8)], record["step"]


def test_a_step_that_draws_nothing_has_an_empty_ledger_and_draws_between_steps_are_data() -> None:
    records = record_steps(torch.nn.Identity())
    assert [r["random_draws"] for r in records] == [[], [], []]
    torch.manual_seed(0)
    model = Model(torch.nn.Identity())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchStepRecorder(model, optimizer, capture=CAPTURE, weight_of=lambda name: 1.0,
                                 ledger=RandomLedger(module_of=lambda: None))
    try:
        for step in (1, 2):
            x = torch.randn(4, 8)  # drawn from the global generator between steps, as a shuffle would
            recorder.begin_step(step, x)
            recorder.backward(recorder.combine_loss({"mean": model(x).mean()}))
            recorder.after_backward()
            optimizer.step()
            recorder.finish_graph()
            record = recorder.end_step()
            assert [(d["phase"], d["generator"], d["module"]) for d in record["random_draws"]] == [
                ("data", "cpu", None)], step
    finally:
        recorder.close()


def test_the_watch_changes_no_number_of_training() -> None:
    def final_weights(watch: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = Model(FusedAttention())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        capture = {**CAPTURE, "random_draws": watch, "graph": watch}
        recorder = TorchStepRecorder(model, optimizer, capture=capture, weight_of=lambda n: 1.0,
                                     ledger=RandomLedger(module_of=lambda: None))
        generator = torch.Generator().manual_seed(3)
        try:
            for step in (1, 2, 3):
                x = torch.randn(2, 4, 8, generator=generator)
                optimizer.zero_grad()
                recorder.begin_step(step, x)
                recorder.backward(recorder.combine_loss({"mean": model(x).pow(2).mean()}))
                recorder.after_backward()
                optimizer.step()
                recorder.finish_graph()
                recorder.end_step()
        finally:
            recorder.close()
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(final_weights(True), final_weights(False)))


class NoisyLinear(torch.nn.Linear):
    """A subclass of a layer that never draws, which draws in its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.01 * torch.randn_like(x[..., :8])


def test_a_subclass_of_a_draw_free_layer_is_still_watched() -> None:
    records = record_steps(NoisyLinear(8, 8))
    for record in records:
        assert places(record) == [("part", "forward", "cpu", "aten::randn_like", 32)], record["step"]


@torch.library.custom_op("repro_audit_tests::noisy_shift", mutates_args=())
def noisy_shift(x: torch.Tensor) -> torch.Tensor:
    """A kernel of another namespace that draws on the side, as a fused extension kernel would."""
    return x + 0.01 * torch.rand(x.shape)


@noisy_shift.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


noisy_shift.register_autograd(lambda ctx, grad: grad)


class CustomNoise(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return noisy_shift(self.inner(x))


def test_a_kernel_of_another_namespace_that_draws_is_named_at_every_step() -> None:
    records = record_steps(CustomNoise())
    assert places(records[0])[0][:3] == ("part", "forward", "cpu")
    for record in records[1:]:
        assert places(record) == [("part", "forward", "cpu", "repro_audit_tests::noisy_shift", None)], record["step"]


def test_a_watched_region_leaves_its_draw_free_layers_and_inert_ops_unread() -> None:
    """The op-level watch of a region that drew skips the Linear inside it, and reads no generator around
    an aten op that is not tagged random."""
    from repro_audit.probes.torch.random_watch import cannot_draw

    torch.manual_seed(0)
    model = Model(Aliased())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchStepRecorder(model, optimizer, capture=CAPTURE, weight_of=lambda name: 1.0,
                                 ledger=RandomLedger(module_of=lambda: None))
    try:
        for step in (1, 2):
            x = torch.randn(4, 8)
            recorder.begin_step(step, x)
            recorder.backward(recorder.combine_loss({"mean": model(x).mean()}))
            recorder.after_backward()
            optimizer.step()
            recorder.finish_graph()
            recorder.end_step()
        seen = {func._schema.name for func in recorder.watch._mode._inert}
    finally:
        recorder.close()
    assert "aten::bernoulli_" in seen
    assert not seen & {"aten::addmm", "aten::t", "aten::linear"}  # the Linear ran outside the mode
    assert cannot_draw(torch.ops.aten.mul.Tensor) and cannot_draw(torch.ops.aten.view.default)
    assert not cannot_draw(torch.ops.aten.bernoulli_.float)
    assert not cannot_draw(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default)
    assert not cannot_draw(torch.ops.repro_audit_tests.noisy_shift.default)

"""Creation order and initial fills, resolved at the op that happens (probes/torch/storage_origins.py)."""

from __future__ import annotations

import torch

from repro_audit.probes.torch.dispatch_capture import DispatchCapture
from repro_audit.probes.torch.initialisation import initialisation_record
from repro_audit.probes.torch.random_ledger import RandomLedger


class PositionIds(torch.nn.Module):
    """A buffer filled by copying a temporary, as HuggingFace's `_init_weights` fills `position_ids`; the
    temporary's address is freed, and may or may not be reused by what is made next."""

    def __init__(self, reuse: bool) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.register_buffer("position_ids", torch.empty(1, 64, dtype=torch.long), persistent=False)
        self.last = torch.nn.Linear(4, 4)
        with torch.no_grad():  # filled after `last` exists, from a temporary that dies at once
            self.position_ids.copy_(torch.arange(64).expand(1, -1))
        kept = [torch.empty(64, dtype=torch.long) for _ in range(8)] if reuse else []  # likely its address
        del kept


def record(model_type: type, **kwargs: object) -> dict[str, dict]:
    torch.manual_seed(0)
    ledger = RandomLedger(module_of=lambda: None)
    capture = DispatchCapture(ledger, lambda: None, record_ops=False, track_storage=True)
    with capture:
        model = model_type(**kwargs)
    found = initialisation_record(model, capture, ledger.take_entries(), seed=0)
    return {tensor["name"]: tensor for tensor in found["tensors"]}


def test_creation_order_does_not_depend_on_whether_a_freed_address_is_reused() -> None:
    reused, fresh = record(PositionIds, reuse=True), record(PositionIds, reuse=False)
    order = lambda found: sorted(found, key=lambda name: found[name]["creation_index"])
    assert order(reused) == order(fresh) == ["first.weight", "first.bias", "position_ids", "last.weight",
                                             "last.bias"]
    assert reused["position_ids"]["initialiser"] == fresh["position_ids"]["initialiser"]


class InitialisedTwice(torch.nn.Module):
    """nn.Linear draws its default init; the model then re-initialises it, as HuggingFace models do."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.other = torch.nn.Linear(4, 4)
        with torch.no_grad():
            self.layer.weight.normal_(0.0, 0.02)
            self.layer.bias.zero_()


def test_the_last_whole_fill_gives_initialiser_and_seed_offset() -> None:
    found = record(InitialisedTwice)
    weight, bias = found["layer.weight"], found["layer.bias"]
    assert weight["initialiser"] == "aten::normal_"
    # The defaults of both layers drew 2 x (16 + 4) values before the re-initialisation.
    assert weight["seed_offset"] == 40
    assert bias["initialiser"] == "aten::zero_" and bias["rng_fingerprint"] is None
    assert found["other.weight"]["initialiser"] == "aten::uniform_" and found["other.weight"]["seed_offset"] == 20


class MovedModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)


def test_a_copied_model_keeps_the_creation_order_and_fills_of_the_original() -> None:
    def build() -> torch.nn.Module:
        return MovedModel().to(torch.float64)

    torch.manual_seed(0)
    ledger = RandomLedger(module_of=lambda: None)
    capture = DispatchCapture(ledger, lambda: None, record_ops=False, track_storage=True)
    with capture:
        model = build()
    found = {t["name"]: t for t in initialisation_record(model, capture, ledger.take_entries(), seed=0)["tensors"]}
    assert [found[n]["creation_index"] for n in ("a.weight", "a.bias", "b.weight", "b.bias")] == [0, 1, 2, 3]
    assert found["b.weight"]["initialiser"] == "aten::uniform_" and found["b.weight"]["seed_offset"] == 20

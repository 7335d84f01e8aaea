"""Batches are fingerprinted by the content of every tensor, in any nesting a real loop uses."""

from __future__ import annotations

import dataclasses

import torch

from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder


@dataclasses.dataclass
class Features:
    ids: torch.Tensor
    extra: dict


def fingerprint(batch: object) -> dict:
    model = torch.nn.Linear(2, 2)
    recorder = TorchStepRecorder(model, torch.optim.SGD(model.parameters(), lr=0.1), capture={"graph": False},
                                 weight_of=lambda name: 1.0, ledger=RandomLedger(module_of=lambda: None))
    try:
        return recorder._batch_record(batch)
    finally:
        recorder.close()


def batches(middle: int) -> list[object]:
    ids = torch.zeros(64, 512, dtype=torch.long)
    ids[32, 256] = middle  # the middle of a tensor whose printed form elides it
    plain = {"input_ids": ids, "attention_mask": torch.ones(64, 512, dtype=torch.long)}
    made = [plain, Features(ids, {"mask": torch.ones(3)}), [ids, (ids,)]]
    try:
        from transformers import BatchEncoding

        made.append(BatchEncoding(plain))
    except ImportError:
        pass
    return made


def test_a_changed_value_in_the_middle_of_any_batch_structure_changes_its_fingerprint() -> None:
    for same, other in zip(batches(0), batches(7)):
        a, b = fingerprint(same), fingerprint(other)
        assert a["tensors"] and a["hash"] != b["hash"], type(same).__name__
        assert a["hash"] == fingerprint(same)["hash"]


def test_a_mapping_batch_names_its_tensors_by_key() -> None:
    found = fingerprint(batches(0)[0])
    assert set(found["tensors"]) == {"input_ids", "attention_mask"}

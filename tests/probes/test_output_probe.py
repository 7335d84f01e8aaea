"""Module outputs are summarised the moment the module returns, and not kept to the end of the step."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from repro_audit.audit.trace.health_fill import complete_health
from repro_audit.probes.torch.health import memory_usage
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder
from repro_audit.probes.torch.tensors import SummaryBatch, summarize


def recorder_for(model: nn.Module, **capture: object) -> TorchStepRecorder:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return TorchStepRecorder(model, optimizer, capture={"graph": False, "random_draws": False, **capture},
                             weight_of=lambda _: 1.0, ledger=RandomLedger(module_of=lambda: None))


def test_an_output_changed_in_place_later_keeps_the_summary_of_what_the_module_returned() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(inplace=True), nn.Linear(64, 2))
    recorder = recorder_for(model)
    x = torch.randn(32, 4)
    with torch.no_grad():
        expected = model[0](x)
    recorder.begin_step(1, x)
    recorder.backward(recorder.combine_loss({"out": model(x).pow(2).mean()}))
    recorder.after_backward()
    record = recorder.end_step()
    recorder.close()
    linear, relu = record["module_outputs"][1], record["module_outputs"][2]
    assert (linear["module"], relu["module"]) == ("0", "1")
    # ReLU(inplace=True) overwrote the Linear's output; its summary still has the negative values.
    assert linear["summary"]["min"] == float(expected.min()) < 0
    assert relu["summary"]["min"] == 0.0
    assert linear["summary"]["hash"] != relu["summary"]["hash"]


def test_no_output_outlives_backward_while_the_step_is_recorded() -> None:
    """Backward frees the activations; a recorder holding them to the end of the step would keep 4 MiB."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4096), nn.Tanh(), nn.Sigmoid(), nn.ReLU(), nn.Softsign())
    recorder = recorder_for(model, nan_provenance=False, term_attribution=False)
    x = torch.randn(64, 8)  # every output is 64 x 4096 float32: 1 MiB
    model(x).mean().backward()  # the first step's one-time allocations (thread pools, caches) come first
    model.zero_grad(set_to_none=True)
    gc.collect()
    before = memory_usage()["heap_in_use"]
    if before is None:
        pytest.skip("no glibc mallinfo2 here")
    recorder.begin_step(2, x)  # a later step: no graph kept for attribution
    recorder.backward(recorder.combine_loss({"out": model(x).mean()}))
    gc.collect()
    held = memory_usage()["heap_in_use"] - before
    recorder.after_backward()
    record = recorder.end_step()
    recorder.close()
    assert held < 2**20 + 2**19, f"{held / 2**20:.1f} MiB still held after backward"  # gradients: 0.13 MiB
    assert [o["module"] for o in record["module_outputs"]] == ["", "0", "1", "2", "3", "4"]
    health = complete_health(record)  # as the trace reader completes it
    assert health is not None
    activations = {entry["module"]: entry for entry in health["activations"]}
    assert activations["1"]["kind"] == "tanh" and "saturated_share" in activations["1"]
    assert activations["3"]["kind"] == "relu" and activations["3"]["units"] == 4096


def test_one_at_a_time_summaries_equal_the_batched_ones() -> None:
    torch.manual_seed(0)
    wide = torch.randn(300, 500)
    wide[0, 0], wide[1, 1] = float("nan"), float("inf")
    tensors = [torch.randn(40_000), torch.randn(100, 300).t(), torch.randn(50_000).bfloat16(),
               torch.randn(64, dtype=torch.float64), torch.randn(7, 3), torch.arange(12), wide]
    originals = [tensor.clone() for tensor in tensors]
    batch = SummaryBatch(count_zeros=False)
    positions = [batch.add(tensor) for tensor in tensors]
    tensors[4].fill_(1.0)  # a small tensor changed after it was handed in: the summary is of what it was
    one_at_a_time = batch.finish()
    expected = summarize(originals, count_zeros=False)
    assert positions == list(range(len(tensors)))
    for mine, theirs in zip(one_at_a_time, expected):
        assert mine.keys() == theirs.keys()
        assert all(mine[k] == theirs[k] or (mine[k] != mine[k] and theirs[k] != theirs[k]) for k in mine)
    assert one_at_a_time[6]["nan"] == 1 and one_at_a_time[6]["inf"] == 1


def test_outputs_in_containers_are_all_summarised_in_order() -> None:
    """A module returning a dict, a tuple and a dataclass: every tensor in it, as `flatten_tensors` orders them."""
    import dataclasses

    from repro_audit.probes.torch.tensors import flatten_tensors, tensors_in

    @dataclasses.dataclass
    class Pair:
        first: object
        second: object

    class Many(nn.Module):
        def forward(self, x: torch.Tensor) -> object:
            return {"a": x * 2, "b": (x + 1, None, [x - 1]), "c": Pair(x.sum(), {"d": x.mean(0)})}

    nested = Many()(torch.randn(3, 4))
    assert [id(t) for t in tensors_in(nested)] == [id(t) for _, t in flatten_tensors(nested)]
    assert len(tensors_in(nested)) == 5
    recorder = recorder_for(nn.Sequential(nn.Linear(4, 4), Many()))
    recorder.begin_step(1, None)
    x = torch.randn(3, 4)
    recorder.model(x)
    recorder.tracker.stop()
    found = {s["module"]: s["summary"] for s in recorder.tracker.summaries()}
    # Each output is named by where it sits in what the module returned, not by its position in a count.
    names = ["1[a]", "1[b.0]", "1[b.2.0]", "1[c.first]", "1[c.second.d]"]
    assert [name for name in found if name.startswith("1")] == names
    with torch.no_grad():
        expected = summarize(tensors_in(Many()(recorder.model[0](x))))
    assert [found[name]["hash"] for name in names] == [s["hash"] for s in expected]

"""Module names of a graph stored at a later step: every node under the innermost module that made it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from repro_audit.audit.config import CAPTURE_DEFAULTS
from repro_audit.probes.torch.autograd_graph import module_of_node, ordered_nodes, reachable
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.step_recorder import TorchStepRecorder


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.inner(x)) * x + 1.0  # the product and the sum belong to the block itself


def _one_call_at_a_time(node: Any, calls: list[Any]) -> str | None:
    """The rule, node by node: the innermost call (the last of the longest paths) whose region holds it."""
    best = None
    for call in calls:
        inside = call.output_nodes and node in reachable(call.output_nodes, stop=set(call.input_nodes))
        if inside and (best is None or len(call.path) >= len(best)):
            best = call.path
    return best


def test_a_graph_stored_at_a_later_step_names_the_innermost_module_of_every_node() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Tanh(), Block(), nn.Linear(6, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchStepRecorder(model, optimizer, capture={**CAPTURE_DEFAULTS, "nan_provenance": False},
                                 weight_of=lambda _: 1.0, ledger=RandomLedger(module_of=lambda: None))
    x = torch.randn(5, 6)
    graphs = {}
    for step in (1, 2):
        optimizer.zero_grad()
        recorder.begin_step(step, x)
        out = model(x)
        terms = {"mse": out.pow(2).mean()}
        if step == 2:  # a term added at step 2: another graph, stored with its modules
            terms["l1"] = out.abs().mean()
        total = recorder.combine_loss(terms)
        if step == 2:
            calls = list(recorder.tracker.calls)
            expected = {i: _one_call_at_a_time(node, calls) for i, node in enumerate(ordered_nodes(total.grad_fn))}
        recorder.backward(total)
        recorder.after_backward()
        optimizer.step()
        graphs[step] = recorder.finish_graph()
        recorder.end_step()
    nodes = graphs[2]["autograd_nodes"]
    assert [node["module"] for node in nodes] == [expected[node["index"]] for node in nodes]
    by_op: dict[str, set[str | None]] = {}
    for node in nodes:
        by_op.setdefault(node["op"], set()).add(node["module"])
    assert by_op["SigmoidBackward0"] == {"0.gate", "2.gate"}
    assert by_op["TanhBackward0"] == {"1"}
    assert by_op["AddmmBackward0"] == {"0.inner", "2.inner", "3"}
    # the blocks' own products (not their children's), and weight x term, outside every module
    assert by_op["MulBackward0"] == {"0", "2", None}
    assert by_op["AbsBackward0"] == {None}  # the loss, outside every module
    assert all(node["module"] is None for node in graphs[1]["autograd_nodes"])  # step 1 names ops instead
    first = ordered_nodes(total.grad_fn)[0]
    assert module_of_node(first, calls) == expected[0]

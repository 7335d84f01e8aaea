"""The ops probe in process: every op executed twice on real tiny models; only the drifting op is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from repro_audit.audit.config import RunConfig
from repro_audit.probes.torch.bit_compare import bitwise_equal
from repro_audit.probes.torch.op_recheck import OpRecheckMode
from repro_audit.probes.torch.ops_run import record_ops

OPS_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch" / "ops"
RECIPE_FILE = OPS_FIXTURES / "ops_recipes.py"


class _Folder:
    """Stands in for the trace writer: keeps what record_ops writes (ops.json) in memory."""

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}

    def write_json(self, name: str, data: Any) -> None:
        self.files[name] = data


def _ops(drifting: str, steps: int = 2) -> dict[str, Any]:
    config = RunConfig.from_dict({"recipe": "ops_recipes:build", "steps": steps, "params": {"drifting": drifting}},
                                 config_dir=str(OPS_FIXTURES))
    folder = _Folder()
    record_ops(config, folder, progress=lambda step: None)  # type: ignore[arg-type]
    return folder.files["ops.json"]


def _line_of(marker: str) -> int:
    lines = RECIPE_FILE.read_text(encoding="utf-8").splitlines()
    return next(number for number, text in enumerate(lines, start=1) if marker in text)


@pytest.fixture(scope="module")
def drifting_forward() -> dict[str, Any]:
    return _ops("forward")


def test_drifting_custom_op_is_named_with_module_line_terms_and_distance(drifting_forward: dict[str, Any]) -> None:
    found = drifting_forward["disagreements"]
    assert [item["op"] for item in found] == ["repro_fixtures::drifting_scale"] * 2  # one per step, nothing else
    first = found[0]
    assert (first["step"], first["phase"], first["module"]) == (1, "forward", "block.drift")
    assert first["source"]["file"] == str(RECIPE_FILE)
    assert first["source"]["line"] == _line_of("# the nondeterministic line")
    assert (first["dtype"], first["shape"]) == ("float32", [8, 6, 16])
    assert first["loss_terms"] == ["ce", "logit_l2"]
    assert 0 < first["distance"]["differing"] <= first["distance"]["elements"] == 8 * 6 * 16
    assert 0 < first["distance"]["max_abs"] < 0.01
    assert drifting_forward["known"] == []
    assert drifting_forward["ops_checked"] > 150 and drifting_forward["ops_not_rerun"] > 50  # views, fills


def test_model_without_a_nondeterministic_op_lists_nothing() -> None:
    record = _ops("none")
    assert record["disagreements"] == [] and record["known"] == []
    assert record["ops_checked"] > 150


def test_drift_in_backward_is_named_with_the_forward_module_and_line() -> None:
    found = _ops("backward", steps=1)["disagreements"]
    assert [(item["op"], item["phase"]) for item in found] == [("repro_fixtures::drifting_scale", "backward")]
    assert found[0]["module"] == "block.drift"
    assert found[0]["source"]["line"] == _line_of("# the line whose backward drifts")
    assert found[0]["backward_node"] and found[0]["loss_terms"] == ["ce", "logit_l2"]


def test_second_execution_leaves_the_random_stream_and_results_as_a_plain_run() -> None:
    """Dropout draws under the mode: its re-execution restores the generator, so training is unchanged."""
    def train(with_mode: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        mode = OpRecheckMode(module_of=lambda: None)
        for _ in range(2):
            optimizer.zero_grad()
            if with_mode:
                with mode:
                    model(torch.ones(4, 8)).sum().backward()
                    optimizer.step()
            else:
                model(torch.ones(4, 8)).sum().backward()
                optimizer.step()
        assert mode.disagreements == []
        return [p.detach().clone() for p in model.parameters()] + [torch.rand(3)]

    assert all(torch.equal(a, b) for a, b in zip(train(False), train(True), strict=True))


def test_known_nondeterministic_op_on_cpu_is_listed_even_when_it_agrees() -> None:
    """index_put_ without accumulate: which duplicate index wins is unspecified, so it is listed."""
    target = torch.zeros(5)
    mode = OpRecheckMode(module_of=lambda: "scatter")
    with mode:
        target[torch.tensor([1, 1, 3])] = torch.tensor([1.0, 2.0, 3.0])
    assert mode.disagreements == []
    known = list(mode.known.values())
    assert [(k["op"], k["device"], k["module"], k["alternative"]) for k in known] == [
        ("aten::index_put_", "cpu", "scatter", True)]


def test_bitwise_means_bit_patterns() -> None:
    nan = torch.tensor([float("nan"), 1.0])
    assert bitwise_equal(nan, nan.clone())
    assert not bitwise_equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not bitwise_equal(torch.ones(2), torch.ones(3))
    # The CPU path reads bytes through numpy; strided, 0-d, odd-sized and conjugate tensors as well.
    grid = torch.arange(12.0).reshape(3, 4)
    assert bitwise_equal(grid.t(), grid.clone().t()) and not bitwise_equal(grid.t(), grid.t() + 1e-6)
    assert bitwise_equal(torch.tensor(2.5), torch.tensor(2.5)) and not bitwise_equal(torch.tensor(2.5), torch.tensor(-2.5))
    odd = torch.tensor([1, 2, 3], dtype=torch.int8)
    assert bitwise_equal(odd, odd.clone()) and not bitwise_equal(odd, torch.tensor([1, 2, 4], dtype=torch.int8))
    complex_values = torch.tensor([1 + 2j])
    assert not bitwise_equal(complex_values.conj(), complex_values)

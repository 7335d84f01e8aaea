"""Attach mode: the user's own loop records the same trace as the runner's loop."""

from __future__ import annotations

from pathlib import Path

import torch

import repro_audit
from repro_audit.audit.trace import Trace


def _build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _train(path: Path, *, aux_weight: float) -> Trace:
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator))
               for _ in range(3)]
    with repro_audit.attach(path, build=_build, seed=0, label="mine", loss_weights={"aux": aux_weight}) as run:
        model, optimizer = run.model, run.optimizer
        for x, y in batches:
            with run.step((x, y)) as step:
                optimizer.zero_grad()
                logits = model(x)
                total = step.loss({"ce": torch.nn.functional.cross_entropy(logits, y), "aux": logits.abs().mean()})
                step.backward(total)
                optimizer.step()
    return Trace(path)


def test_attach_records_steps_terms_and_initialisation(tmp_path: Path) -> None:
    trace = _train(tmp_path / "a.trace", aux_weight=0.0)
    assert trace.complete and len(trace.steps) == 3
    first = trace.steps[0]
    assert first["loss_terms"]["aux"]["weight"] == 0.0
    assert first["term_attribution"]["aux"]["params_nonzero"] == 0
    assert first["random_draws"] and first["random_draws"][0]["module"] == "2"
    offsets = {t["name"]: t["seed_offset"] for t in trace.initialisation["tensors"]}
    assert offsets["0.weight"] == 0 and offsets["3.weight"] == 4 * 8 + 8
    assert trace.graph(1) is not None


def test_attach_is_deterministic_and_sees_weights(tmp_path: Path) -> None:
    a = _train(tmp_path / "a.trace", aux_weight=0.0)
    b = _train(tmp_path / "b.trace", aux_weight=0.0)
    c = _train(tmp_path / "c.trace", aux_weight=0.5)
    last = lambda t: {k: v["hash"] for k, v in t.steps[-1]["parameters"].items()}  # noqa: E731
    assert last(a) == last(b)
    assert last(a) != last(c)


def test_attach_marks_a_crash_incomplete(tmp_path: Path) -> None:
    model, optimizer = _build()
    try:
        with repro_audit.attach(tmp_path / "x.trace", model=model, optimizer=optimizer) as run:
            with run.step(torch.zeros(1)) as step:
                step.loss({"ce": model(torch.zeros(2, 4)).sum()})
            raise ValueError("user loop broke")
    except ValueError:
        pass
    trace = Trace(tmp_path / "x.trace")
    assert not trace.complete and trace.error["type"] == "ValueError"
    assert "not observed" in trace.initialisation["note"]

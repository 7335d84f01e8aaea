"""The fixture Transformer in Keras 3, recorded twice as `check` would: bitwise identical on CPU.

The same two traces show what a TF trace holds: torch-like module paths, layer outputs in execution
order, Keras dropout draws with their SeedGenerator states, the op graph with layers and terms, the
optimizer state by parameter, and term attribution at step 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from repro_audit.audit.trace import Trace

pytestmark = pytest.mark.tensorflow
pytest.importorskip("tensorflow")

STEPS = 2


def hashes(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every hash, digest and RNG fingerprint in a JSON document, with where it sits. Optimizer state holds
    bare hashes under its slot names (`momentum`, `velocity`), so hashes are found by value, not by key."""
    if isinstance(value, dict):
        for key, item in sorted(value.items()):
            yield from hashes(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from hashes(item, f"{path}[{index}]")
    elif isinstance(value, str) and value.startswith("xxh3:"):
        yield path, value


def without_memory(record: dict[str, Any]) -> dict[str, Any]:
    health = record.get("health")
    return {**record, "health": {**health, "memory": None}} if isinstance(health, dict) else record


def test_two_recordings_are_identical_in_every_hash(baseline_twice: tuple[Trace, Trace]) -> None:
    a, b = baseline_twice
    for part in ("initialisation", "structure"):
        assert list(hashes(getattr(a, part))) == list(hashes(getattr(b, part)))
    for step in range(1, STEPS + 1):
        found = list(hashes(a.step(step)))
        # Per parameter: its gradient, its value and Adam's two moments; then layer outputs, draws, buffers.
        assert len(found) > 4 * len(a.step(step)["parameters"]) > 300
        assert found == list(hashes(b.step(step)))
        # Values and statistics too, not only hashes; health's memory figures are the one part that differs.
        assert without_memory(a.step(step)) == without_memory(b.step(step))
        assert a.step(step)["health"]["layers"] and a.step(step)["health"]["activations"]
    assert a.graph_steps() == b.graph_steps() == [1]
    assert a.graph(1) == b.graph(1)


def test_the_trace_speaks_the_torch_vocabulary(baseline_twice: tuple[Trace, Trace]) -> None:
    trace, _ = baseline_twice
    paths = [module["path"] for module in trace.structure["modules"]]
    assert paths[0] == "" and "decoder.layers.0.cross_attn.q" in paths and "decoder.layers.1.ff.up" in paths
    step = trace.step(1)
    assert list(step["loss_terms"]) == ["ce"] and step["loss_terms"]["ce"]["weight"] == 1.0
    gradient = step["gradients"]["decoder.layers.0.cross_attn.q.kernel"]
    assert gradient["shape"] == [32, 32] and gradient["hash"].startswith("xxh3:") and gradient["nan"] == 0
    assert step["parameters"].keys() == step["gradients"].keys()
    assert step["optimizer"]["type"] == "Adam"
    assert set(step["optimizer"]["state"]["decoder.out.kernel"]) == {"momentum", "velocity"}
    assert step["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert step["optimizer"]["scalars"] == {"iterations": 1}

    outputs = [(o["module"], o["call"]) for o in step["module_outputs"]]
    assert outputs[0] == ("[0]", 0)  # the model's logits come first: calls are listed as they start
    assert ("decoder.layers.1.cross_attn[1]", 0) in outputs  # its attention weights
    assert ("encoder.layers.0.dropout", 1) in outputs  # a layer called twice

    draws = step["random_draws"]
    assert len(draws) == 22 and {d["op"] for d in draws} == {"keras.random.dropout"}
    assert draws[0]["generator"] == "encoder.dropout.seed_generator" and draws[0]["seed_state"][1] == 0
    second = trace.step(2)["random_draws"][0]
    assert second["seed_state"][1] == 1 and second["offset_before"] == draws[0]["count"]

    ops = trace.graph(1)["ops"]
    assert step["graph"] == {"digest": trace.graph(1)["digest"], "ops": len(ops), "stored": True}
    assert trace.step(2)["graph"]["stored"] is False
    matmul = next(op for op in ops if op["module"] == "decoder.layers.0.cross_attn.q" and op["op"] == "MatMul")
    assert matmul["phase"] == "forward" and matmul["loss_term"] == "ce"
    assert any(op["phase"] == "backward" and op["module"] == "decoder.layers.0.cross_attn.q" for op in ops)
    assert step["term_attribution"]["ce"]["params_nonzero"] == len(step["gradients"])
    assert trace.step(2)["term_attribution"] is None and step["nan_provenance"] is None


def test_initialisation_tells_creation_order_seeds_and_keras_names(baseline_twice: tuple[Trace, Trace]) -> None:
    trace, _ = baseline_twice
    tensors = {t["name"]: t for t in trace.initialisation["tensors"]}
    kernel = tensors["decoder.layers.0.cross_attn.q.kernel"]
    assert kernel["generator"] == "keras-seed-generator" and kernel["seed_source"] == "python-random-draw"
    assert kernel["initialiser"] == "GlorotUniform" and kernel["module_type"] == "Dense"
    assert kernel["keras_path"].endswith("/kernel")
    bias = tensors["decoder.layers.0.cross_attn.q.bias"]
    assert bias["generator"] is None and bias["initialiser"] == "Zeros"
    indices = [t["creation_index"] for t in trace.initialisation["tensors"]]
    assert sorted(indices) == list(range(len(indices)))
    # The seed offset is the place of the initializer's seed among the seeds Keras drew from Python's random.
    seeded = [t for t in trace.initialisation["tensors"] if t["generator"] == "keras-seed-generator"]
    offsets = [t["seed_offset"] for t in seeded]
    assert len(set(offsets)) == len(offsets)  # one Keras seed per initializer and per SeedGenerator
    dropout = tensors["encoder.dropout.seed_generator.state"]
    assert dropout["initialiser"] == "SeedGenerator" and dropout["seed_state"] == [dropout["op_seed"], 0]
    draws = trace.initialisation["draws"]
    assert [d["offset_before"] for d in draws] == sorted(d["offset_before"] for d in draws)
    by_target = {d["target"]: d for d in draws}
    assert by_target[kernel["name"]]["offset_before"] == kernel["seed_offset"]
    assert by_target[kernel["name"]]["seed"] == kernel["op_seed"] and by_target[kernel["name"]]["values"] == 32 * 32
    assert bias["name"] not in by_target
    environment = trace.environment
    assert environment["framework"]["name"] == "tensorflow" and environment["framework"]["keras"]
    assert environment["determinism"]["op_determinism"] in (True, False)
    assert "TF_DETERMINISTIC_OPS" in environment["env_vars"]

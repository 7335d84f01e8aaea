"""Creation order, seeds and initial values of every variable of a Keras / tf.Module model.

A `tf.variable_creator_scope` around the recipe's build sees every tf.Variable as it is created; the random
draw that produced its value is the Keras draw made just before (an initializer runs right before its
variable is created). In Keras 3 an unseeded initializer or SeedGenerator (Dropout) gets an integer seed
from Python's `random` when it is *constructed*. That integer is the op seed (`op_seed`); its position
among the seeds Keras drew is the `seed_offset`, which moves by one for every seed drawn by a layer
constructed earlier: the Keras form of torch's seed offset, in the same unit as the `draws` ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro_audit.probes.common.hashing import hash_array
from repro_audit.probes.tf.capture import Capture, RandomCall, initializer_in_stack
from repro_audit.probes.tf.model_tree import ModelTree
from repro_audit.probes.tf.tensors import dtype_name, summarize, to_numpy


@dataclass
class Creation:
    index: int
    variable: Any
    name: str | None
    initializer: str | None
    seeds_before: int  # Keras default seeds drawn before this variable was created
    draws: list[RandomCall] = field(default_factory=list)


class CreationLedger:
    """Every tf.Variable created while the scope is open, with the random draws that preceded it."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.creations: list[Creation] = []
        self.build_draws: list[RandomCall] = []
        self._consumed = 0

    def creator(self, next_creator: Any, **kwargs: Any) -> Any:
        variable = next_creator(**kwargs)
        calls = self.capture.random_calls[self._consumed:]
        self._consumed = len(self.capture.random_calls)
        self.build_draws.extend(calls)
        self.creations.append(Creation(len(self.creations), variable, kwargs.get("name"),
                                       initializer_in_stack(), len(self.capture.default_seeds), list(calls)))
        return variable

    @contextmanager
    def scope(self) -> Iterator[None]:
        import tensorflow as tf

        with tf.variable_creator_scope(self.creator):
            yield
        self.build_draws.extend(self.capture.random_calls[self._consumed:])
        self._consumed = len(self.capture.random_calls)


def initialisation_record(tree: ModelTree, ledger: CreationLedger, capture: Capture, *, seed: int
                          ) -> dict[str, Any]:
    by_variable = {id(c.variable): c for c in ledger.creations}
    creations = {tracked.name: by_variable.get(id(tracked.tf_variable)) for tracked in tree.variables}
    ranked = sorted((c.index, name) for name, c in creations.items() if c is not None)
    creation_index = {name: rank for rank, (_, name) in enumerate(ranked)}
    module_types = {entry.path: entry.type for entry in tree.modules}
    seed_index: dict[int, int] = {}
    for position, value in enumerate(capture.default_seeds):
        seed_index.setdefault(value, position)
    generator_states = {f"{path}.state" for path in tree.seed_generators.values()}
    targets: dict[int, str] = {}
    records = []
    for tracked in tree.variables:
        creation = creations[tracked.name]
        variable = tracked.variable
        record: dict[str, Any] = {
            "name": tracked.name,
            "kind": tracked.kind,
            "module": tracked.module,
            "module_type": module_types.get(tracked.module),
            "keras_path": tracked.keras_path,
            "creation_index": creation_index.get(tracked.name),
            "shape": [int(n) for n in variable.shape],
            "dtype": dtype_name(variable.dtype),
            "summary": summarize(variable),
        }
        if tracked.name in generator_states:
            record.update(_generator_fields(to_numpy(variable), seed_index))
        elif creation is None:
            record.update(initialiser=None, generator=None, seed_offset=None, rng_fingerprint=None,
                          note="created outside the recipe's build; creation order not observed")
        else:
            record.update(_seed_fields(creation, seed_index))
            for call in creation.draws:
                targets[id(call)] = tracked.name
        records.append(record)
    return {
        "generators": {
            "tf-global-seed": {"seed": seed},
            "keras-seed-generator": {
                "seed": seed, "default_seeds_drawn": len(capture.default_seeds),
                "rule": "unseeded Keras initializers and SeedGenerators draw random.randint(1, 10**9) from "
                        "Python's random when constructed; seed_offset and offset_before count those draws",
            },
        },
        "tensors": records,
        "draws": _seed_ledger(records, ledger.build_draws, targets, capture, tree),
    }


def _seed_fields(creation: Creation, seed_index: dict[int, int]) -> dict[str, Any]:
    """The seed of the draw that filled a variable, and its place in Keras's stream of default seeds."""
    draws = [call for call in creation.draws if call.state is not None]
    if not draws:
        return {"initialiser": creation.initializer, "generator": None, "seed_offset": None,
                "rng_fingerprint": None}
    first = draws[0]
    state = np.asarray(first.state, dtype=np.int64)
    from_default = first.generator == "keras-int-seed" and int(state[0]) in seed_index
    if from_default:
        # The seed offset is the seed's position in Python's random stream: one more seed drawn by a
        # layer constructed earlier moves it by one (the Keras 3 form of torch's seed offset).
        generator, offset = "keras-seed-generator", seed_index[int(state[0])]
    elif first.generator == "keras-int-seed":
        generator, offset = "keras-int-seed", None  # a seed the recipe fixed: no offset to shift
    else:
        generator, offset = first.generator, int(state[-1])  # a SeedGenerator's counter
    return {
        "initialiser": creation.initializer or first.op,
        "generator": generator,
        "seed_source": "python-random-draw" if from_default else first.generator,
        "seed_offset": offset,
        "op_seed": int(state[0]),
        "rng_fingerprint": hash_array(state),
        "seed_state": [int(n) for n in state],
        "random_op": first.op,
    }


def _generator_fields(state: np.ndarray, seed_index: dict[int, int]) -> dict[str, Any]:
    """A SeedGenerator's state variable starts as [seed, 0]: its seed is drawn like an initializer's."""
    state = np.asarray(state, dtype=np.int64).reshape(-1)
    seed = int(state[0])
    return {"initialiser": "SeedGenerator", "generator": "keras-seed-generator",
            "seed_source": "python-random-draw" if seed in seed_index else "recipe",
            "seed_offset": seed_index.get(seed), "op_seed": seed, "rng_fingerprint": hash_array(state),
            "seed_state": [int(n) for n in state]}


def _seed_ledger(records: list[dict[str, Any]], build_draws: list[RandomCall], targets: dict[int, str],
                 capture: Capture, tree: ModelTree) -> list[dict[str, Any]]:
    """initialisation.json `draws`: one entry per seed Keras drew from Python's random, in order, with what
    consumed it (an initializer's draw into a variable, a SeedGenerator), then the other build draws.

    `offset_before` is the seed's position in that stream and `count` is 1 (one seed), so the entries are
    in the unit of `seed_offset`; `values` is how many random values a draw with that seed produced.
    """
    default_seeds = capture.default_seeds
    module_of = {record["name"]: record["module"] for record in records}
    consumers: dict[int, list[dict[str, Any]]] = {}
    others = []
    for call in build_draws:
        target = targets.get(id(call))
        state = np.asarray(call.state, dtype=np.int64) if call.state is not None else None
        entry = {"op": call.op, "target": target, "module": module_of.get(target) if target else call.module,
                 "seed_source": call.generator,
                 "values": int(call.count) if isinstance(call.count, (int, np.integer)) else None,
                 "rng_fingerprint": hash_array(state) if state is not None else None,
                 "seed_state": [int(n) for n in state] if state is not None else None}
        if call.generator == "keras-int-seed" and state is not None and int(state[0]) in default_seeds:
            consumers.setdefault(int(state[0]), []).append(entry)
        else:
            others.append({**entry, "offset_before": call.seeds_before})
    for record in records:
        if record.get("initialiser") == "SeedGenerator" and record.get("seed_offset") is not None:
            consumers.setdefault(record["op_seed"], []).append({
                "op": "keras.SeedGenerator", "target": record["name"], "module": record["module"],
                "seed_source": "python-random-draw", "values": 0, "rng_fingerprint": record["rng_fingerprint"],
                "seed_state": record["seed_state"]})
    layer_paths = tree.path_of()
    draws = []
    for position, (seed, owner) in enumerate(zip(default_seeds, capture.seed_owners)):
        # A seed nothing consumed (the initializer of a layer never built) still moved the stream.
        unused = {"op": "keras.make_default_seed", "target": None,
                  "module": layer_paths.get(id(owner.layer)) if owner.layer is not None else None,
                  "seed_source": "python-random-draw", "values": 0, "rng_fingerprint": None, "seed_state": None}
        for entry in consumers.pop(seed, None) or [unused]:
            draws.append({**entry, "name": owner.kind, "offset_before": position, "seed": seed})
    draws.extend(others)
    draws.sort(key=lambda draw: draw["offset_before"])  # stable: creation order within one position
    # `count` is in the seed stream's unit: a default seed is one value of it, other draws take none.
    return [{"index": index, "generator": "keras-seed-generator", "count": 1 if "seed" in draw else 0, **draw}
            for index, draw in enumerate(draws)]

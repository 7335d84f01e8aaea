"""Structure and initialisation of a tf.compat.v1 graph: variable scopes as modules, op seeds as offsets.

In a v1 graph an unseeded random op gets its op seed (`seed2`) from the graph when the op is created: in
TF 1.x the id of the last op in the graph (so *any* op added earlier shifts it), in TF 2.x a per-graph
counter of unseeded random ops (so only random ops added earlier shift it). The record keeps the seed
the op actually got, the rule of the installed TF, how many ops and random ops came before, and the list of
the recipe's ops in creation order, so two traces show which ops were added before a variable. The `draws`
ledger has one entry per random op with its op seed as `offset_before`: the unit of `seed_offset`, so the
differ can tell which random ops seeded before a variable exist in one run only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from repro_audit.probes.common.hashing import hash_array
from repro_audit.probes.tf.graph_record import STATEFUL_RANDOM_OPS, ancestors
from repro_audit.probes.tf.model_tree import ModuleEntry, TrackedVariable, _describe
from repro_audit.probes.tf.tensors import dtype_name, summarize_array

RANDOM_OP_MARKERS = ("Random", "TruncatedNormal", "Multinomial")


def variable_name(variable: Any) -> str:
    return variable.op.name.replace("/", ".")


class GraphTree:
    """Modules are the variable scopes that hold variables (and their parents), in order of appearance."""

    def __init__(self, variables: list[Any], trainable: set[int]) -> None:
        self.modules: list[ModuleEntry] = [ModuleEntry("", None, "Graph", None)]
        self.variables: list[TrackedVariable] = []
        self.seed_generators: dict[int, str] = {}
        by_path = {"": self.modules[0]}
        for variable in variables:
            name = variable_name(variable)
            module = name.rsplit(".", 1)[0] if "." in name else ""
            parts = module.split(".") if module else []
            for depth in range(1, len(parts) + 1):
                path = ".".join(parts[:depth])
                if path not in by_path:
                    by_path[path] = ModuleEntry(path, None, "VariableScope", parts[depth - 1])
                    self.modules.append(by_path[path])
            kind = "parameter" if id(variable) in trainable else "buffer"
            tracked = TrackedVariable(name, kind, module, variable)
            by_path[module].variables.append(tracked)
            self.variables.append(tracked)
        self._scopes = {entry.path.replace(".", "/"): entry.path for entry in self.modules if entry.path}

    def parameters(self) -> list[TrackedVariable]:
        return [v for v in self.variables if v.kind == "parameter"]

    def structure(self) -> list[dict[str, Any]]:
        return [{"path": e.path, "type": e.type, "name": e.name,
                 "parameters": [_describe(v) for v in e.variables if v.kind == "parameter"],
                 "buffers": [_describe(v) for v in e.variables if v.kind == "buffer"]} for e in self.modules]

    def module_of_name(self, op_name: str) -> str | None:
        """The innermost variable scope an op's name lies in (gradient scopes stripped)."""
        scope = op_name.rsplit("/", 1)[0] if "/" in op_name else ""
        for prefix in ("gradients/",):
            scope = scope.removeprefix(prefix)
        while scope:
            if scope in self._scopes:
                return self._scopes[scope]
            scope = scope.rsplit("/", 1)[0] if "/" in scope else ""
        return None


def seed_rule() -> str:
    """How this TF derives the op seed of an unseeded random op in a graph."""
    from tensorflow.python.framework import random_seed

    if hasattr(random_seed, "_graph_to_seed_dict"):
        return "per-graph counter of unseeded random ops (TF 2.x): only random ops added earlier shift it"
    return "id of the last op in the graph (TF 1.x): any op added earlier shifts it"


def is_random_op(op: Any) -> bool:
    return op.type in STATEFUL_RANDOM_OPS or (op.type.startswith("Stateless") and "Random" in op.type)


def graph_initialisation(graph: Any, tree: GraphTree, initial: dict[str, np.ndarray], *, build_end: int,
                         seed: int | None) -> dict[str, Any]:
    """initialisation.json for a v1 graph; `initial` holds each variable's value after the initializer ran."""
    build_ops = [op for op in graph.get_operations() if op._id <= build_end]
    random_ops = [op for op in build_ops if is_random_op(op)]
    random_rank = {op._id: rank for rank, op in enumerate(random_ops)}
    order = sorted(tree.variables, key=lambda tracked: tracked.variable.op._id)
    creation_index = {tracked.name: rank for rank, tracked in enumerate(order)}
    types = {entry.path: entry.type for entry in tree.modules}
    targets: dict[int, str] = {}
    records = []
    for tracked in tree.variables:
        variable = tracked.variable
        initial_value = getattr(variable, "initial_value", None)
        feeding = ancestors([initial_value.op]) if initial_value is not None else set()
        random_op = next((op for op in random_ops if op._id in feeding), None)
        value = initial[tracked.name]
        record: dict[str, Any] = {
            "name": tracked.name, "kind": tracked.kind, "module": tracked.module,
            "module_type": types.get(tracked.module), "variable": variable.op.name,
            "creation_index": creation_index[tracked.name], "shape": [int(n) for n in variable.shape],
            "dtype": dtype_name(variable.dtype), "summary": summarize_array(value),
            "ops_before": variable.op._id - 1,
        }
        if random_op is None:
            record.update(initialiser=initial_value.op.type if initial_value is not None else None,
                          generator=None, seed_offset=None, rng_fingerprint=None,
                          random_ops_before=sum(1 for op in random_ops if op._id < variable.op._id))
        else:
            targets[random_op._id] = tracked.name
            op_seeds = _seeds(random_op)
            record.update(
                initialiser=f"{random_op.type} ({initial_value.op.name.rsplit('/', 1)[-1]})",
                generator="tf-op-seed", graph_seed=op_seeds[0], op_seed=op_seeds[1],
                seed_offset=seed_offset(op_seeds),
                rng_fingerprint=hash_array(np.asarray(op_seeds, dtype=np.int64)), random_op=random_op.name,
                ops_before=random_op._id - 1, random_ops_before=random_rank[random_op._id])
        records.append(record)
    draws = []
    for index, op in enumerate(random_ops):
        op_seeds = _seeds(op)
        target = targets.get(op._id)
        draws.append({"index": index, "op": op.type, "name": op.name, "target": target,
                      "module": tree.module_of_name(op.name), "generator": "tf-op-seed",
                      "count": _numel(op), "offset_before": seed_offset(op_seeds), "seed": list(op_seeds),
                      "rng_fingerprint": hash_array(np.asarray(op_seeds, dtype=np.int64))})
    return {
        "generators": {"tf-global-seed": {"seed": seed}, "tf-op-seed": {"rule": seed_rule()}},
        "tensors": records,
        "draws": draws,
        "build_ops": [{"index": op._id, "name": op.name, "op": op.type} for op in build_ops],
    }


MAXINT32 = 2**31 - 1


def seed_offset(seeds: tuple[int, int]) -> int:
    """The op seed as a position: TF turns the seeds (0, 0) of the first unseeded op under graph seed 0
    into (0, 2**31 - 1), since (0, 0) means "nondeterministic" to its kernels; that op is at position 0."""
    return 0 if seeds == (0, MAXINT32) else seeds[1]


def _seeds(op: Any) -> tuple[int, int]:
    try:
        return int(op.get_attr("seed")), int(op.get_attr("seed2"))
    except (ValueError, TypeError):
        return (0, 0)


def _numel(op: Any) -> int | None:
    shape = op.outputs[0].shape if op.outputs else None
    if shape is None or not shape.is_fully_defined():
        return None
    return int(np.prod(shape.as_list()))

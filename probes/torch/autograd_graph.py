"""Walks over the autograd graph: its digest, which loss terms reach a node, which module made it.

The autograd graph is built on every step anyway, so walking it is how later steps notice a changed
computation (a loss term added at step N) without the cost of a dispatch mode.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import torch

from repro_audit.probes.common.hashing import hash_text

ACCUMULATE_GRAD = "torch::autograd::AccumulateGrad"


def reachable(roots: Iterable[Any], *, stop: set[Any] | None = None) -> set[Any]:
    """Every node reachable from `roots` through next_functions, not walking past `stop` nodes."""
    stop = stop or set()
    seen: set[Any] = set()
    todo = [node for node in roots if node is not None]
    while todo:
        node = todo.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        todo.extend(child for child, _ in node.next_functions if child is not None)
    return seen


def ordered_nodes(root: Any) -> list[Any]:
    """Nodes in a canonical depth-first order, so equal graphs give equal sequences."""
    order: list[Any] = []
    seen: set[Any] = set()
    todo = [root] if root is not None else []
    # Walked at every step (the graph digest): children already seen are not pushed at all, which
    # leaves the order unchanged, since a seen node popped later would have been skipped.
    pop, push, visit, keep = todo.pop, todo.extend, seen.add, order.append
    while todo:
        node = pop()
        if node in seen:
            continue
        visit(node)
        keep(node)
        push([child for child, _ in reversed(node.next_functions) if child is not None and child not in seen])
    return order


def graph_digest(nodes: Sequence[Any]) -> str:
    return hash_text("\n".join([node_name(node) for node in nodes]))


# Node names by node type: `name()` builds a new string per call, some 700 a step for the digest. Only a
# type that names its nodes (its name is theirs, namespaces aside) is kept; the cache starts over past a
# bound, as Python Functions can be made on the fly.
_NAME_OF_NODE_TYPE: dict[type, str] = {}
_NODE_TYPE_CACHE_LIMIT = 4096


def node_name(node: Any) -> str:
    """`node.name()`."""
    name = _NAME_OF_NODE_TYPE.get(type(node))
    if name is None:
        name = node.name()
        if type(node).__name__ == name.rsplit("::", 1)[-1]:
            if len(_NAME_OF_NODE_TYPE) >= _NODE_TYPE_CACHE_LIMIT:
                _NAME_OF_NODE_TYPE.clear()
            _NAME_OF_NODE_TYPE[type(node)] = name
    return name


def term_membership(term_tensors: Mapping[str, torch.Tensor]) -> dict[Any, list[str]]:
    """For each node, the loss terms whose graph contains it."""
    membership: dict[Any, list[str]] = {}
    for term, tensor in term_tensors.items():
        for node in reachable([tensor.grad_fn]):
            membership.setdefault(node, []).append(term)
    return membership


def term_label(terms: list[str] | None, all_terms: int) -> str | None:
    """`loss_term` of an op: the one term that uses it, "shared" when several do, None when none."""
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else "shared"


def module_of_node(node: Any, calls: Sequence[Any]) -> str | None:
    """The innermost module call whose forward created `node` (between its inputs and its outputs)."""
    return modules_of_nodes([node], calls).get(node)


def modules_of_nodes(nodes: Iterable[Any], calls: Sequence[Any]) -> dict[Any, str]:
    """`module_of_node` of many nodes, each call's region walked once (a stored graph of a later step
    names the module of every node: walking every call's region per node took seconds)."""
    wanted = set(nodes)
    best: dict[Any, str] = {}
    for call in calls:
        if not call.output_nodes:
            continue
        for node in reachable(call.output_nodes, stop=set(call.input_nodes)) & wanted:
            found = best.get(node)
            if found is None or len(call.path) >= len(found):
                best[node] = call.path
    return best


def forward_op_name(node_name: str) -> str:
    """aten-style name of the forward op behind a backward node: MulBackward0 -> aten::mul."""
    base = re.sub(r"Backward\d*$", "", node_name.split("::")[-1])
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()
    return f"aten::{snake}"

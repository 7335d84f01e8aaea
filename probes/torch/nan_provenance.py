"""Where NaN or Inf entered the gradients, and which loss term sends what to which parameter.

Both run only where needed: at step 1 (attribution) and at a step where gradients turn non-finite. The
step's backward keeps its graph (retain_graph), so finding the origin replays the backward with a hook on
every node instead of slowing every step down the way anomaly mode does.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from repro_audit.probes.torch.autograd_graph import (
    ACCUMULATE_GRAD,
    forward_op_name,
    module_of_node,
    reachable,
    term_label,
    term_membership,
)

MAX_ORIGINS = 8


def find_origins(total: torch.Tensor, leaves: Sequence[torch.Tensor], *, weighted: Mapping[str, torch.Tensor],
                 weights: Mapping[str, float], calls: Sequence[Any],
                 node_to_op: Mapping[Any, int] | None = None, ops: Sequence[dict[str, Any]] | None = None
                 ) -> list[dict[str, Any]]:
    """Backward nodes whose incoming gradients are finite and whose outgoing gradients are not."""
    nodes = reachable([total.grad_fn])
    fired: list[tuple[Any, tuple[Any, ...], tuple[Any, ...]]] = []

    def watch(node: Any) -> Any:
        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            if len(fired) >= 4 * MAX_ORIGINS:
                return
            if all(g is None or bool(torch.isfinite(g).all()) for g in grad_outputs):
                if any(g is not None and not bool(torch.isfinite(g).all()) for g in grad_inputs):
                    fired.append((node, grad_inputs, grad_outputs))
        return hook

    handles = [node.register_hook(watch(node)) for node in nodes if node.name() != ACCUMULATE_GRAD]
    try:
        torch.autograd.grad(total, list(leaves), retain_graph=True, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    # Backward runs last-created first; report origins in forward order, so layer 0 comes before layer 1.
    fired.sort(key=lambda item: _sequence_number(item[0]))
    membership = term_membership(weighted)
    return [_describe(node, grad_inputs, membership, weights, calls, node_to_op, ops)
            for node, grad_inputs, _ in fired[:MAX_ORIGINS]]


def _sequence_number(node: Any) -> int:
    try:
        return int(node._sequence_nr())
    except (AttributeError, RuntimeError):
        return 0


def _describe(node: Any, grad_inputs: tuple[Any, ...], membership: Mapping[Any, list[str]],
              weights: Mapping[str, float], calls: Sequence[Any], node_to_op: Mapping[Any, int] | None,
              ops: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    terms = membership.get(node, [])
    term = term_label(terms, len(weights))
    exact = _exact_op(node, node_to_op, ops)
    producers = [_exact_op(child, node_to_op, ops) or forward_op_name(child.name())
                 for child, _ in node.next_functions if child is not None and child.name() != ACCUMULATE_GRAD]
    nan = sum(int(torch.isnan(g).sum()) for g in grad_inputs if g is not None)
    inf = sum(int(torch.isinf(g).sum()) for g in grad_inputs if g is not None)
    numel = sum(g.numel() for g in grad_inputs if g is not None)
    return {
        "node": node.name(),
        "forward_op": exact or forward_op_name(node.name()),
        "module": module_of_node(node, calls),
        "loss_term": term,
        "loss_terms": terms,
        "loss_weight": weights.get(term) if term in weights else None,
        "inputs_from": producers,
        "saved_nonfinite": _saved_nonfinite(node),
        "grad_out": {"nan": nan, "inf": inf, "numel": numel},
    }


def _exact_op(node: Any, node_to_op: Mapping[Any, int] | None, ops: Sequence[dict[str, Any]] | None) -> str | None:
    if not node_to_op or ops is None or node not in node_to_op:
        return None
    return str(ops[node_to_op[node]]["op"])


def _saved_nonfinite(node: Any) -> dict[str, dict[str, int]]:
    """Non-finite values in what the node saved from the forward pass: the -inf of a mask shows here."""
    found: dict[str, dict[str, int]] = {}
    for attribute in dir(node):
        if not attribute.startswith("_saved_"):
            continue
        try:
            value = getattr(node, attribute)
        except RuntimeError:  # freed or not accessible
            continue
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            counts = {"nan": int(torch.isnan(value).sum()), "posinf": int(torch.isposinf(value).sum()),
                      "neginf": int(torch.isneginf(value).sum())}
            if any(counts.values()):
                found[attribute.removeprefix("_saved_")] = counts
    return found


def attribute_terms(weighted: Mapping[str, torch.Tensor], weights: Mapping[str, float],
                    parameters: Sequence[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    """Per weighted loss term: which parameters it sends non-finite or non-zero gradients to."""
    names = [name for name, _ in parameters]
    tensors = [tensor for _, tensor in parameters]
    attribution: dict[str, Any] = {}
    for term, value in weighted.items():
        entry: dict[str, Any] = {"weight": weights[term], "nonfinite": {}, "nonzero": {}, "norm": {}}
        if value.requires_grad:
            grads = torch.autograd.grad(value, tensors, retain_graph=True, allow_unused=True)
            for name, grad in zip(names, grads):
                if grad is None:
                    continue
                nonfinite = int((~torch.isfinite(grad)).sum())
                nonzero = int(torch.count_nonzero(grad))
                norm = float(torch.linalg.vector_norm(grad.float()))
                if nonfinite:
                    entry["nonfinite"][name] = nonfinite
                if nonzero:
                    entry["nonzero"][name] = nonzero
                entry["norm"][name] = norm if math.isfinite(norm) else None
        entry["params_nonfinite"] = len(entry["nonfinite"])
        entry["params_nonzero"] = len(entry["nonzero"])
        attribution[term] = entry
    return attribution

"""The op graph of a recorded step: ops labelled with the loss terms that use them, and the graph file.

Pure functions of what the step recorder holds (its dispatch capture, the autograd nodes of the total
loss), kept apart from the recorder's lifecycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from repro_audit.probes.common.hashing import hash_text
from repro_audit.probes.torch.autograd_graph import term_label
from repro_audit.probes.torch.dispatch_capture import DispatchCapture


def label_ops(dispatch: DispatchCapture, membership: Mapping[Any, list[str]], labelled: set[Any],
              terms: int) -> None:
    """Each forward op gets the loss term whose graph holds its autograd node ("shared" for several); nodes
    labelled by an earlier micro-batch keep their label."""
    for node, index in dispatch.node_to_op.items():
        if node in labelled:
            continue
        labelled.add(node)
        found = membership.get(node)
        dispatch.ops[index]["loss_term"] = term_label(found, terms)
        if found and len(found) > 1:
            dispatch.ops[index]["loss_terms"] = found


def autograd_graph(step: int, digest: str, nodes: Sequence[Any], modules: Mapping[Any, str],
                   membership: Mapping[Any, list[str]], terms: int) -> dict[str, Any]:
    """A step's graph as autograd nodes in canonical order, before `completed_graph` adds the ops."""
    return {"step": step, "autograd_digest": digest,
            "autograd_nodes": [{"index": i, "op": node.name(), "module": modules.get(node),
                                "loss_term": term_label(membership.get(node), terms)} for i, node in enumerate(nodes)]}


def completed_graph(graph: dict[str, Any], dispatch: DispatchCapture | None) -> dict[str, Any]:
    """The graph file: aten ops of every phase where the step ran under the dispatch capture (backward ops
    take the module and loss term of their forward op), else the autograd nodes alone."""
    if dispatch is None:
        graph.update(level="autograd", ops=[], digest=graph["autograd_digest"])
        return graph
    ops = dispatch.ops
    for op in ops:
        forward = op.get("forward_op")
        if op["phase"] == "backward" and forward is not None:
            op["module"] = ops[forward]["module"]
            op["loss_term"] = ops[forward]["loss_term"]
    graph.update(level="aten", ops=ops, digest=hash_text("\n".join(f"{op['phase']}:{op['op']}" for op in ops)))
    return graph

"""How many classes a loss term scores, read from the step-1 op graph when the recipe did not declare it.

`F.cross_entropy` reaches the dispatcher as `aten::nll_loss_forward` (or `nll_loss2d_forward`) on the
log-probabilities, whose class dimension is 1 (0 for an unbatched input); a binary cross entropy scores
2 classes per element. A term is inferred only when every such op it owns agrees on the count; a term
that mixes a cross entropy with other losses still gets the count, which the tolerance has to absorb.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Classification ops whose first input is the [N, C] logits (or log-probabilities): torch's aten ops and
# TensorFlow's fused softmax cross entropies.
NLL_OPS = frozenset({"aten::nll_loss_forward", "aten::nll_loss2d_forward", "aten::nll_loss",
                     "aten::nll_loss_nd", "aten::nll_loss2d", "aten::cross_entropy_loss",
                     "SparseSoftmaxCrossEntropyWithLogits", "SoftmaxCrossEntropyWithLogits"})
BINARY_OPS = frozenset({"aten::binary_cross_entropy", "aten::binary_cross_entropy_with_logits"})


@dataclass(frozen=True)
class ClassCount:
    """A class count and where it came from, said in words for the report."""

    classes: int
    source: str


def infer_num_classes(graph: Mapping[str, Any]) -> dict[str, ClassCount]:
    """{loss term: class count} for the terms whose classification ops agree on one count."""
    seen: dict[str, set[tuple[int, str]]] = {}
    for op in graph.get("ops") or []:
        if op.get("phase") != "forward" or not isinstance(op.get("loss_term"), str):
            continue
        name = op.get("op")
        if name in NLL_OPS:
            shapes = op.get("input_shapes") or []
            shape = shapes[0] if shapes and isinstance(shapes[0], list) else None
            if not shape:
                continue
            dim = shape[1] if len(shape) >= 2 else shape[0]
            if not isinstance(dim, int):
                continue  # a graph-mode placeholder with an unknown class dimension says nothing
            count = dim
            seen.setdefault(op["loss_term"], set()).add((count, f"{name} input {shape}"))
        elif name in BINARY_OPS:
            seen.setdefault(op["loss_term"], set()).add((2, name))
    counts = {}
    for term, found in seen.items():
        agreed = {count for count, _ in found}
        if len(agreed) == 1 and min(agreed) >= 2:
            evidence = min(where for _, where in found)
            counts[term] = ClassCount(min(agreed), f"inferred from {evidence}")
    return counts

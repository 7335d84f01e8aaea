"""Initialisation: which tensors exist, in which creation order, from which seed offset, with which values.

Keeping "moved" (another creation position) and "seed offset" apart from "values differ" is the point:
a parameter whose initialiser drew from another position of the random stream is the seed-offset story,
not a different model.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.registry import CategoryResult, comparator
from repro_audit.audit.divergence import Divergence


@comparator("initialisation")
def compare_initialisation(context: CompareContext) -> CategoryResult:
    tensors_a = _by_name(context.trace_a.initialisation)
    tensors_b = _by_name(context.trace_b.initialisation)
    match = context.parameters
    result = CategoryResult(compared=len(match.pairs) + len(match.added) + len(match.removed))
    for name in match.removed:
        if name in tensors_a:
            result.divergences.append(_only_in_one("removed", name, tensors_a[name]))
    for name in match.added:
        if name in tensors_b:
            result.divergences.append(_only_in_one("added", name, tensors_b[name]))
    renamed = dict(match.renamed)
    moved = {a for a, _ in match.moved}
    for name_a, name_b in match.pairs:
        tensor_a, tensor_b = tensors_a.get(name_a), tensors_b.get(name_b)
        if tensor_a is None or tensor_b is None:
            continue
        found = _compare_tensor(context, name_a, name_b, tensor_a, tensor_b)
        if name_a in renamed:
            found.append(Divergence(
                "initialisation", name_b, "renamed", order=_creation(tensor_b),
                explanation=f"{name_a} in run A is {name_b} in run B (same shape and place).",
                evidence={"a": name_a, "b": name_b, "shape": tensor_b.get("shape")}))
        if name_a in moved:
            found.append(Divergence(
                "initialisation", name_b, "moved", order=_creation(tensor_b),
                explanation=f"{name_b} is created at another position relative to the other tensors.",
                evidence={"creation_index": {"a": _creation(tensor_a), "b": _creation(tensor_b)}}))
        for another in found[1:]:
            another.counted = False  # one tensor, one item: its other findings are not counted again
        result.divergences.extend(found)
    result.divergences.extend(_tied(context))
    result.compared += len(_tie_aliases(context))
    return result


def _tied(context: CompareContext) -> list[Divergence]:
    """Tied weights (one tensor under two names) in one run and separate tensors, or other ties, in the other."""
    tied_a = context.trace_a.initialisation.get("tied") or {}
    tied_b = context.trace_b.initialisation.get("tied") or {}
    found = []
    for alias in _tie_aliases(context):
        a, b = tied_a.get(alias), tied_b.get(alias)
        if a == b:
            continue
        found.append(Divergence(
            "initialisation", alias, "changed", order=-1, evidence={"tied": {"a": a, "b": b}},
            explanation=f"{alias} is {_tie_text(a)} in run A and {_tie_text(b)} in run B."))
    return found


def _tie_aliases(context: CompareContext) -> list[str]:
    tied_a = context.trace_a.initialisation.get("tied") or {}
    tied_b = context.trace_b.initialisation.get("tied") or {}
    return sorted(set(tied_a) | set(tied_b))


def _tie_text(target: Any) -> str:
    return f"tied to {target} (the same tensor)" if target else "a tensor of its own"


def _compare_tensor(context: CompareContext, name_a: str, name_b: str, tensor_a: dict[str, Any],
                    tensor_b: dict[str, Any]) -> list[Divergence]:
    value_evidence = context.tensor_divergence(f"initial/{name_a}", 0, tensor_a.get("summary"),
                                               tensor_b.get("summary"))
    if value_evidence is None:
        return []  # same initial values: another seed offset of a non-random initialiser does not matter
    evidence = dict(value_evidence)
    evidence.update(
        seed_offset={"a": tensor_a.get("seed_offset"), "b": tensor_b.get("seed_offset")},
        creation_index={"a": _creation(tensor_a), "b": _creation(tensor_b)},
        initialiser={"a": tensor_a.get("initialiser"), "b": tensor_b.get("initialiser")},
        generator=tensor_b.get("generator"),
        module=tensor_b.get("module"),
        tensor_kind=tensor_b.get("kind"),
    )
    shifted = tensor_a.get("seed_offset") != tensor_b.get("seed_offset")
    detail = (f"drawn from seed offset {tensor_a.get('seed_offset')} in run A and {tensor_b.get('seed_offset')}"
              f" in run B" if shifted else "drawn from the same seed offset")
    return [Divergence("initialisation", name_b, "changed", order=_creation(tensor_b), evidence=evidence,
                       explanation=f"initial values of {name_b} differ ({detail}).")]


def _only_in_one(kind: str, name: str, tensor: dict[str, Any]) -> Divergence:
    where = "run B" if kind == "added" else "run A"
    return Divergence(
        "initialisation", name, kind, order=_creation(tensor),
        explanation=f"{name} ({tensor.get('module')}) exists only in {where}.",
        evidence={"module": tensor.get("module"), "shape": tensor.get("shape"),
                  "seed_offset": tensor.get("seed_offset"), "creation_index": _creation(tensor),
                  "random_values": _draw_count(tensor)})


def _draw_count(tensor: dict[str, Any]) -> int | None:
    summary = tensor.get("summary") or {}
    return summary.get("numel") if tensor.get("rng_fingerprint") else 0


def _creation(tensor: dict[str, Any]) -> int:
    return int(tensor.get("creation_index") or 0)


def _by_name(initialisation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(tensor["name"]): tensor for tensor in initialisation.get("tensors") or []}

"""Per-step comparators of what goes into the loss: data, random draws, module outputs, loss terms.

Each keeps execution order in `order`, so the first differing module output is the first one the forward
pass produced, not the first in alphabetical order.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import numpy as np

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.registry import CategoryResult, comparator
from repro_audit.audit.diff.values import array_evidence
from repro_audit.audit.divergence import Divergence, display_module


@comparator("data")
def compare_data(context: CompareContext) -> CategoryResult:
    result = CategoryResult()
    for step, record_a, record_b in context.step_pairs():
        batch_a, batch_b = record_a.get("batch") or {}, record_b.get("batch") or {}
        tensors_a, tensors_b = batch_a.get("tensors") or {}, batch_b.get("tensors") or {}
        result.compared += max(len(set(tensors_a) | set(tensors_b)), 1)
        if batch_a.get("hash") == batch_b.get("hash"):
            continue
        for order, name in enumerate(sorted(set(tensors_a) | set(tensors_b))):
            evidence = context.tensor_divergence(f"batch/{name}", step, tensors_a.get(name), tensors_b.get(name))
            if evidence is None:
                continue
            result.divergences.append(Divergence(
                "data", f"batch.{name}", "changed", step=step, order=order, evidence=evidence,
                explanation=f"the batch tensor {name!r} of step {step} has other contents."))
        if not any(d.step == step for d in result.divergences):
            result.divergences.append(Divergence(
                "data", "batch", "changed", step=step, evidence={"a": batch_a.get("hash"), "b": batch_b.get("hash")},
                explanation=f"the batch of step {step} differs."))
    return result


@comparator("random_draws")
def compare_random_draws(context: CompareContext) -> CategoryResult:
    """Draws aligned by where they happened (module, phase, generator): a draw in one run only, or a shared
    draw from another stream position. Consecutive draws of one place are compared as one, by the generator
    states around them, so the same draw seen op by op in one run and as one moved state in the other (its
    region was not yet watched op by op) is the same draw."""
    result = CategoryResult()
    for step, record_a, record_b in context.step_pairs():
        if not captured_in_both(record_a, record_b, "random_draws"):
            continue
        draws_a = group_draws(record_a.get("random_draws") or [])
        draws_b = group_draws(record_b.get("random_draws") or [])
        keys_a = [_place(d) for d in draws_a]
        keys_b = [_place(d) for d in draws_b]
        matcher = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
        for tag, a1, a2, b1, b2 in matcher.get_opcodes():
            # Aligned draws are one item each; a draw of one run only is one item too.
            result.compared += a2 - a1 if tag == "equal" else (a2 - a1) + (b2 - b1)
            if tag == "equal":
                for offset in range(a2 - a1):
                    found = _shared_draw(step, draws_a[a1 + offset], draws_b[b1 + offset], b1 + offset)
                    if found:
                        result.divergences.append(found)
                continue
            for index in range(a1, a2):
                result.divergences.append(_one_sided_draw(step, draws_a[index], "removed", index))
            for index in range(b1, b2):
                result.divergences.append(_one_sided_draw(step, draws_b[index], "added", index))
    return result


def captured_in_both(record_a: dict[str, Any], record_b: dict[str, Any], key: str) -> bool:
    """A section that is null in a step record was not captured (the Keras fit callback cannot see layer
    outputs or draws inside `fit`): nothing to compare, not a run that drew or computed nothing."""
    return record_a.get(key, []) is not None and record_b.get(key, []) is not None


def group_draws(draws: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive ledger entries of one place merged: the state before the first, after the last, the
    values counted where every entry knows its count, and the ops in order."""
    groups: list[dict[str, Any]] = []
    for draw in draws:
        if not isinstance(draw, dict):
            continue
        op = draw.get("op")
        if groups and _place(groups[-1]) == _place(draw) and groups[-1].get("rng_after") is not None \
                and draw.get("rng_after") is not None:
            group = groups[-1]
            group["rng_after"] = draw.get("rng_after")
            counts = (group.get("count"), draw.get("count"))
            group["count"] = sum(counts) if all(isinstance(c, int) for c in counts) else None
            if op not in group["ops"]:
                group["ops"].append(op)
            group["draws"] += 1
            continue
        groups.append({**draw, "ops": [op], "draws": 1})
    return groups


def _place(draw: dict[str, Any]) -> tuple[Any, ...]:
    return (draw.get("module"), draw.get("phase"), draw.get("generator"))


def _known(value: Any) -> bool:
    return value not in (None, "unavailable")


def _same_draw(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal generator states say it all; offsets and counts decide only where states were not readable."""
    if _known(a.get("rng_fingerprint")) and _known(b.get("rng_fingerprint")):
        if a.get("rng_fingerprint") != b.get("rng_fingerprint"):
            return False
        if _known(a.get("rng_after")) and _known(b.get("rng_after")):
            return a.get("rng_after") == b.get("rng_after")
        return not (isinstance(a.get("count"), int) and isinstance(b.get("count"), int)
                    and a.get("count") != b.get("count"))
    return a.get("offset_before") == b.get("offset_before") and a.get("count") == b.get("count") \
        and a.get("rng_fingerprint") == b.get("rng_fingerprint")


def _shared_draw(step: int, a: dict[str, Any], b: dict[str, Any], position: int) -> Divergence | None:
    if _same_draw(a, b):
        return None
    offset_a, offset_b = a.get("offset_before"), b.get("offset_before")
    exact = a.get("offset_exact", True) and b.get("offset_exact", True)
    shift = offset_b - offset_a if exact and isinstance(offset_a, int) and isinstance(offset_b, int) else None
    where = display_module(b.get("module"))
    if shift:
        how = f"starts {abs(shift)} values {'later' if shift > 0 else 'earlier'} in the stream in run B"
    elif a.get("rng_fingerprint") == b.get("rng_fingerprint"):
        how = "starts from the same generator state but draws another amount"
    else:
        how = "starts from another generator state"
    return Divergence(
        "random_draws", f"{_ops_text(b)} in {where}", "changed", step=step, order=position,
        explanation=f"the random draw of {_ops_text(b)} in {where} at step {step} {how}.",
        evidence={"module": b.get("module"), "op": b.get("op"), "ops": b.get("ops"), "phase": b.get("phase"),
                  "generator": b.get("generator"), "offset_before": {"a": offset_a, "b": offset_b}, "shift": shift,
                  "count": {"a": a.get("count"), "b": b.get("count")},
                  "rng_fingerprint": {"a": a.get("rng_fingerprint"), "b": b.get("rng_fingerprint")},
                  "rng_after": {"a": a.get("rng_after"), "b": b.get("rng_after")}})


def _one_sided_draw(step: int, draw: dict[str, Any], kind: str, position: int) -> Divergence:
    where = "run B" if kind == "added" else "run A"
    count = draw.get("count")
    amount = f"{count} random values" if isinstance(count, int) else f"random values from {draw.get('generator')}"
    module = display_module(draw.get("module"))
    return Divergence(
        "random_draws", f"{_ops_text(draw)} in {module}", kind, step=step, order=position,
        explanation=f"only {where} draws {amount} with {_ops_text(draw)} in {module} at step {step}.",
        evidence={"module": draw.get("module"), "op": draw.get("op"), "ops": draw.get("ops"), "count": count,
                  "generator": draw.get("generator"), "offset_before": draw.get("offset_before"),
                  "phase": draw.get("phase"), "run": "b" if kind == "added" else "a"})


def _ops_text(draw: dict[str, Any]) -> str:
    ops = [op for op in draw.get("ops") or [draw.get("op")] if op]
    return ", ".join(str(op) for op in ops) if ops else "an untraced op"


@comparator("module_outputs")
def compare_module_outputs(context: CompareContext) -> CategoryResult:
    result = CategoryResult()
    for step, record_a, record_b in context.step_pairs():
        if not captured_in_both(record_a, record_b, "module_outputs"):
            continue
        outputs_a = {(o.get("module"), o.get("call")): o for o in record_a.get("module_outputs") or []}
        outputs_b = {(o.get("module"), o.get("call")): o for o in record_b.get("module_outputs") or []}
        position_b = {key: index for index, key in enumerate(outputs_b)}
        position_a = {key: index for index, key in enumerate(outputs_a)}
        result.compared += len(set(outputs_a) | set(outputs_b))
        for key in list(outputs_b) + [k for k in outputs_a if k not in outputs_b]:
            module, call = key
            name = f"{module}#{call}"
            order = position_b.get(key, position_a.get(key, 0))
            if key not in outputs_a or key not in outputs_b:
                kind = "added" if key not in outputs_a else "removed"
                result.divergences.append(Divergence(
                    "module_outputs", name, kind, step=step, order=order,
                    explanation=f"only run {'B' if kind == 'added' else 'A'} has output {display_module(module)} (call {call}) "
                                f"at step {step}.", evidence={"module": module, "call": call}))
                continue
            evidence = context.tensor_divergence(f"module_outputs/{name}", step, outputs_a[key].get("summary"),
                                                 outputs_b[key].get("summary"))
            if evidence is not None:
                evidence.update(module=module, call=call)
                result.divergences.append(Divergence(
                    "module_outputs", name, _value_kind(evidence), step=step, order=order, evidence=evidence,
                    explanation=f"the output {display_module(module)} (call {call}) differs at step {step}."))
    return result


@comparator("loss_terms")
def compare_loss_terms(context: CompareContext) -> CategoryResult:
    result = CategoryResult()
    for step, record_a, record_b in context.step_pairs():
        terms_a, terms_b = record_a.get("loss_terms") or {}, record_b.get("loss_terms") or {}
        names = list(terms_b) + [name for name in terms_a if name not in terms_b]
        result.compared += len(names)
        for order, name in enumerate(names):
            found = _compare_term(step, name, terms_a.get(name), terms_b.get(name), order)
            if found and found.kind == "changed" and "abs_error" in found.evidence:
                found.evidence.update(_term_value_evidence(context, step, name, found.evidence))
                if not context.tolerance.bitwise and found.evidence.get("mismatched") == 0:
                    continue  # within the tolerance
            if found:
                result.divergences.append(found)
    return result


def _term_value_evidence(context: CompareContext, step: int, name: str, evidence: dict[str, Any]) -> dict[str, Any]:
    """ULP and error of a differing loss term: from the kept tensors, else from the recorded float32 values."""
    pair = context.values_pair(f"loss_terms/{name}", step)
    if pair is None:
        pair = (np.asarray([evidence["a"]], dtype=np.float32), np.asarray([evidence["b"]], dtype=np.float32))
    return {key: value for key, value in array_evidence(pair[0], pair[1], context.tolerance).items()
            if key in ("max_ulp", "max_abs_error", "max_rel_error", "compared_by", "mismatched")}


def _compare_term(step: int, name: str, a: dict[str, Any] | None, b: dict[str, Any] | None,
                  order: int) -> Divergence | None:
    if a is None or b is None:
        term = a or b or {}
        kind = "added" if a is None else "removed"
        return Divergence(
            "loss_terms", name, kind, step=step, order=order,
            explanation=f"loss term {name} (weight {term.get('weight')}) exists only in run "
                        f"{'B' if kind == 'added' else 'A'}.",
            evidence={"weight": term.get("weight"), "value": term.get("value"), "run": "b" if a is None else "a"})
    if a.get("weight") != b.get("weight"):
        return Divergence(
            "loss_terms", name, "changed", step=step, order=order,
            explanation=f"loss term {name} has weight {a.get('weight')} in run A and {b.get('weight')} in run B.",
            evidence={"weight": {"a": a.get("weight"), "b": b.get("weight")}, "a": a.get("value"), "b": b.get("value")})
    if a.get("hash") == b.get("hash"):
        return None
    value_a, value_b = a.get("value"), b.get("value")
    evidence: dict[str, Any] = {"a": value_a, "b": value_b, "weight": b.get("weight")}
    kind = "changed"
    if isinstance(value_a, float) and isinstance(value_b, float):
        if math.isfinite(value_a) and math.isfinite(value_b):
            evidence["abs_error"] = abs(value_a - value_b)
        elif math.isfinite(value_a) != math.isfinite(value_b):
            kind = "nonfinite"
    return Divergence("loss_terms", name, kind, step=step, order=order, evidence=evidence,
                      explanation=f"loss term {name} is {value_a!r} in run A and {value_b!r} in run B at step {step}.")


def _value_kind(evidence: dict[str, Any]) -> str:
    """'nonfinite' when the runs disagree on where NaN or Inf are, otherwise 'changed'."""
    if evidence.get("nonfinite_mismatch"):
        return "nonfinite"
    if (evidence.get("nan_a"), evidence.get("inf_a")) != (evidence.get("nan_b"), evidence.get("inf_b")):
        return "nonfinite"
    return "changed"

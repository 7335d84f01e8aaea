"""Per-step comparators of the update: NaN provenance, gradients, optimizer, parameters after the step.

Parameters are matched once (context.parameters), so a renamed parameter is compared with its
counterpart at every step instead of being reported as one removed and one added tensor.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.compare_steps import _value_kind
from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.registry import CategoryResult, comparator
from repro_audit.audit.divergence import Divergence, display_module

OPTIMIZER_STATE_ORDER = 1000  # optimizer state sorts after the hyper-parameters of the same step
UPDATE_ORDER = 500  # what happened between backward and the optimizer step, between the two
# Param-group keys that schedulers add for their own bookkeeping (OneCycleLR, CyclicLR...): the optimizer
# never reads them. A torch trace lists the optimizer's own keys (`own_keys`); these are for traces without.
SCHEDULER_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum", "base_lr"})
# `update` facts that are measured, not set: they follow from the gradients, and differ whenever those do.
MEASURED_UPDATE = frozenset({"grad_norm", "gradient_norm_backward", "gradient_norm_step", "gradient_factor"})
UPDATE_DEFAULTS: dict[str, Any] = {"micro_batches": 1}


@comparator("nan_provenance")
def compare_nan_provenance(context: CompareContext) -> CategoryResult:
    """Where NaN/Inf entered the gradients in one run and not (or elsewhere) in the other."""
    result = CategoryResult()
    for step, record_a, record_b in context.step_pairs():
        origins_a = _origins(record_a)
        origins_b = _origins(record_b)
        result.compared += len(set(origins_a) | set(origins_b))
        for order, key in enumerate(list(origins_b) + [k for k in origins_a if k not in origins_b]):
            if key in origins_a and key in origins_b:
                continue
            side, record = ("b", record_b) if key in origins_b else ("a", record_a)
            origin = (origins_b if side == "b" else origins_a)[key]
            result.divergences.append(_origin_divergence(step, origin, side, record, order))
    return result


def _origins(record: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    provenance = record.get("nan_provenance") or {}
    return {(o.get("node"), o.get("module"), o.get("loss_term")): o for o in provenance.get("origins") or []}


def _origin_divergence(step: int, origin: dict[str, Any], side: str, record: dict[str, Any],
                       order: int) -> Divergence:
    term = origin.get("loss_term")
    attribution = ((record.get("term_attribution") or {}).get(term) or {}) if term else {}
    reached = sorted((attribution.get("nonfinite") or {}).items())
    nonfinite_parameters = (record.get("nan_provenance") or {}).get("nonfinite_parameters") or []
    evidence = {key: origin.get(key) for key in ("node", "forward_op", "module", "loss_term", "loss_weight",
                                                 "inputs_from", "saved_nonfinite", "grad_out")}
    evidence.update(run=side, parameters=len(reached) if reached else len(nonfinite_parameters),
                    parameters_named=[name for name, _ in reached[:10]] or nonfinite_parameters[:10])
    where = "run B" if side == "b" else "run A"
    return Divergence(
        "nan_provenance", f"{origin.get('node')} in {display_module(origin.get('module'))}", "nonfinite", step=step,
        order=order,
        evidence=evidence,
        explanation=f"in {where} only, NaN/Inf enters the gradients at step {step} in {origin.get('node')} "
                    f"({origin.get('forward_op')}) of {display_module(origin.get('module'))}, loss term {term}.")


@comparator("gradients")
def compare_gradients(context: CompareContext) -> CategoryResult:
    return _compare_tensors(context, "gradients", "gradient")


@comparator("parameters")
def compare_parameters(context: CompareContext) -> CategoryResult:
    return _compare_tensors(context, "parameters", "value after the optimizer step")


@comparator("buffers")
def compare_buffers(context: CompareContext) -> CategoryResult:
    """Buffers after the step (batch-norm running statistics, counters): part of the trained model."""
    return _compare_tensors(context, "buffers", "value after the step")


def _compare_tensors(context: CompareContext, key: str, noun: str) -> CategoryResult:
    result = CategoryResult()
    pairs = context.parameters.pairs
    for step, record_a, record_b in context.step_pairs():
        tensors_a, tensors_b = record_a.get(key) or {}, record_b.get(key) or {}
        present = [(order, name_a, name_b) for order, (name_a, name_b) in enumerate(pairs)
                   if name_a in tensors_a or name_b in tensors_b]
        result.compared += len(present)
        evidences = context.tensor_divergences([(f"{key}/{name_a}", step, tensors_a.get(name_a), tensors_b.get(name_b))
                                                for _, name_a, name_b in present])
        for (order, name_a, name_b), evidence in zip(present, evidences):
            if evidence is None:
                continue
            kind = _value_kind(evidence)
            what = _difference_text(evidence)
            result.divergences.append(Divergence(
                key, name_b, kind, step=step, order=order, evidence=evidence,
                explanation=f"the {noun} of {name_b} differs at step {step}{what}."))
    return result


def _difference_text(evidence: dict[str, Any]) -> str:
    if evidence.get("nan_a") != evidence.get("nan_b") or evidence.get("inf_a") != evidence.get("inf_b"):
        return (f" (NaN {evidence.get('nan_a')} vs {evidence.get('nan_b')}, Inf {evidence.get('inf_a')} vs "
                f"{evidence.get('inf_b')})")
    if "max_abs_error" in evidence:
        return (f" ({evidence.get('mismatched')} of {evidence.get('numel')} values, max abs error "
                f"{evidence['max_abs_error']:.3g}, {evidence.get('max_ulp')} ULP)")
    return ""


@comparator("optimizer")
def compare_optimizer(context: CompareContext) -> CategoryResult:
    result = CategoryResult()
    to_a = context.parameters.b_to_a
    for step, record_a, record_b in context.step_pairs():
        optimizer_a, optimizer_b = record_a.get("optimizer") or {}, record_b.get("optimizer") or {}
        result.compared += 1
        if optimizer_a.get("type") != optimizer_b.get("type"):
            result.divergences.append(Divergence(
                "optimizer", "optimizer type", "changed", step=step, order=0,
                evidence={"a": optimizer_a.get("type"), "b": optimizer_b.get("type")},
                explanation=f"the optimizer is {optimizer_a.get('type')} in run A and {optimizer_b.get('type')} "
                            f"in run B."))
        result.compared += _hyperparameter_count(optimizer_a, optimizer_b)
        result.divergences.extend(_hyperparameters(step, optimizer_a, optimizer_b))
        update_a, update_b = record_a.get("update") or {}, record_b.get("update") or {}
        result.compared += len(set(update_a) | set(update_b))
        result.divergences.extend(_update(step, update_a, update_b))
        result.compared += _compare_state(step, optimizer_a.get("state") or {}, optimizer_b.get("state") or {},
                                          to_a, result.divergences)
    return result


def _compare_state(step: int, state_a: dict[str, Any], state_b: dict[str, Any], to_a: dict[str, str],
                   found: list[Divergence]) -> int:
    """Per parameter: state in both runs that differs, or state that only one run keeps (a parameter that
    exists, or is trained, in one run only)."""
    matched_a = {to_a.get(name_b, name_b) for name_b in state_b}
    names: list[tuple[str | None, str]] = [(name_b, to_a.get(name_b, name_b)) for name_b in sorted(state_b)]
    names += [(None, name_a) for name_a in sorted(state_a) if name_a not in matched_a]
    for order, (name_b, name_a) in enumerate(names):
        in_a, in_b = name_a in state_a, name_b is not None
        name = name_b or name_a
        if in_a != in_b:
            kind, run = ("added", "B") if in_b else ("removed", "A")
            found.append(Divergence(
                "optimizer", f"state of {name}", kind, step=step, order=OPTIMIZER_STATE_ORDER + order,
                evidence={"keys": sorted((state_b.get(name) if in_b else state_a.get(name)) or {}), "run": run},
                explanation=f"only run {run} keeps optimizer state for {name} after step {step}."))
            continue
        entry_a, entry_b = state_a.get(name_a) or {}, state_b.get(name) or {}
        differing = sorted(k for k in set(entry_a) | set(entry_b) if entry_a.get(k) != entry_b.get(k))
        if differing:
            found.append(Divergence(
                "optimizer", f"state of {name}", "changed", step=step, order=OPTIMIZER_STATE_ORDER + order,
                evidence={"keys": differing, "a": {k: entry_a.get(k) for k in differing},
                          "b": {k: entry_b.get(k) for k in differing}},
                explanation=f"optimizer state {', '.join(differing)} of {name} differs after step {step}."))
    return len(names)


def _hyperparameter_count(optimizer_a: dict[str, Any], optimizer_b: dict[str, Any]) -> int:
    """The param-group keys compared, in every group either run has."""
    groups_a, groups_b = optimizer_a.get("param_groups") or [], optimizer_b.get("param_groups") or []
    return sum(len((set(groups_a[index] if index < len(groups_a) else {})
                    | set(groups_b[index] if index < len(groups_b) else {})) - {"params"})
               for index in range(max(len(groups_a), len(groups_b))))


def _hyperparameters(step: int, optimizer_a: dict[str, Any], optimizer_b: dict[str, Any]) -> list[Divergence]:
    found = []
    groups_a, groups_b = optimizer_a.get("param_groups") or [], optimizer_b.get("param_groups") or []
    own = set(optimizer_a.get("own_keys") or []) | set(optimizer_b.get("own_keys") or [])
    for index in range(max(len(groups_a), len(groups_b))):
        group_a = groups_a[index] if index < len(groups_a) else {}
        group_b = groups_b[index] if index < len(groups_b) else {}
        for key in sorted((set(group_a) | set(group_b)) - {"params"}):
            a, b = group_a.get(key), group_b.get(key)
            if a == b:
                continue
            setting = key not in own if own else key in SCHEDULER_KEYS
            if setting:
                # A scheduler's bookkeeping: the optimizer never reads it; what it changes shows as lr.
                found.append(Divergence(
                    "optimizer", f"{key} (param group {index})", "changed", step=step, order=index,
                    evidence={"a": a, "b": b, "scheduler_setting": key, "param_group": index},
                    explanation=f"param group {index} holds {key} {a!r} in run A and {b!r} in run B at step "
                                f"{step} (a scheduler's setting, not read by the optimizer)."))
                continue
            found.append(Divergence(
                "optimizer", f"{key} (param group {index})", "changed", step=step, order=index,
                evidence={"a": a, "b": b, "hyperparameter": key, "param_group": index},
                explanation=f"optimizer hyper-parameter {key} of param group {index} is {a!r} in run A and "
                            f"{b!r} in run B at step {step}."))
    return found


def _update(step: int, update_a: dict[str, Any], update_b: dict[str, Any]) -> list[Divergence]:
    """Micro-batches, clipping, gradient scaling, the recipe's own facts: settings compare like
    hyper-parameters; of what was measured, only the factor the gradients were scaled by."""
    found = []
    keys = sorted((set(update_a) | set(update_b)) - MEASURED_UPDATE)
    for order, key in enumerate(keys):
        a, b = update_a.get(key, UPDATE_DEFAULTS.get(key)), update_b.get(key, UPDATE_DEFAULTS.get(key))
        if a != b:
            found.append(Divergence(
                "optimizer", key, "changed", step=step, order=UPDATE_ORDER + order,
                evidence={"a": a, "b": b, "hyperparameter": key, "param_group": "update"},
                explanation=f"{_update_noun(key)} is {a!r} in run A and {b!r} in run B at step {step}."))
    factor_a, factor_b = update_a.get("gradient_factor"), update_b.get("gradient_factor")
    if factor_a != factor_b:
        found.append(Divergence(
            "optimizer", "gradients at the optimizer step", "changed", step=step, order=UPDATE_ORDER + len(keys),
            evidence={"a": factor_a, "b": factor_b, "measured": "gradient_factor",
                      "norm_backward": {"a": update_a.get("gradient_norm_backward"),
                                        "b": update_b.get("gradient_norm_backward")},
                      "norm_step": {"a": update_a.get("gradient_norm_step"), "b": update_b.get("gradient_norm_step")}},
            explanation=f"between backward and optimizer.step() the gradients are scaled by {_factor(factor_a)} in "
                        f"run A and {_factor(factor_b)} in run B at step {step} (gradient clipping or scaling)."))
    return found


def _update_noun(key: str) -> str:
    nouns = {"micro_batches": "the number of micro-batches per step", "clip_grad_norm": "the gradient clip norm",
             "clip_grad_value": "the gradient clip value", "grad_scale": "the GradScaler's loss scale",
             "lr_control": "RETURNN's learning-rate control",
             "lr_control_error_key": "the score RETURNN's learning-rate control decides by",
             "lr_control_epochs": "RETURNN's learning-rate control state (learning rates and scores per epoch)"}
    if key in nouns:
        return nouns[key]
    return f"the recipe's before_optimizer_step fact {key}" if key == "hook" else f"update setting {key}"


def _factor(value: Any) -> str:
    return "nothing (unchanged)" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)

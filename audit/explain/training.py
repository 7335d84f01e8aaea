"""Causes 5, 6 and 7: the random stream moved during training, NaN entered through a loss term, or a
hyper-parameter differs at some step."""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence, display_module
from repro_audit.audit.explain.finding import Claims, Finding
from repro_audit.audit.explain.inputs import _named
from repro_audit.audit.explain.structure import _term_weights

VALUE_CATEGORIES = ("module_outputs", "loss_terms", "gradients", "parameters", "buffers", "optimizer")


def random_stream_shift(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    one_sided = [d for d in claims.free(divergences) if d.category == "random_draws" and d.kind in ("added", "removed")]
    if not one_sided:
        return []
    first = min(one_sided, key=lambda d: d.sort_key())
    step = first.step or 0
    shifted = [d for d in divergences if d.category == "random_draws" and d.kind == "changed"
               and (d.step or 0) >= step and d.evidence.get("generator") == first.evidence.get("generator")]
    shared = [d for d in shifted if d.step == step and d.order > first.order] or shifted
    term, weight = _loss_term_of(context, step, first.evidence.get("module"))
    branch = f" (loss term {term}, weight {weight})" if term else ""
    run = "run B" if first.kind == "added" else "run A"
    why = ""
    if shared and first.evidence.get("generator") == TF_OP_SEED:
        victim = shared[0]
        moved, why = _op_seed_move(context)
        after = (f"so {moved} (first: {_draw_text(victim)} at step {victim.step}{_op_seed_text(context, victim)}), "
                 f"and what they draw (dropout masks) differs from step {victim.step}")
    elif shared and str(first.evidence.get("generator")).startswith(TF_GENERATOR):
        victim = shared[0]
        after = (f"so later draws of the same tf.random.Generator {_values_moved(victim)} (first: "
                 f"{_draw_text(victim)} at step {victim.step}), and what they draw differs from step {victim.step}")
    elif shared and str(first.evidence.get("op")).startswith(KERAS_RANDOM):
        victim = shared[0]
        extra = sum(1 for d in one_sided if d.evidence.get("generator") == first.evidence.get("generator")
                    and d.step == step and d.kind == first.kind)
        after = (f"so later draws of that Keras seed generator take its state {extra} draw"
                 f"{'s' if extra > 1 else ''} later in {run} (first: {_draw_text(victim)} at step {victim.step}), "
                 f"and what they draw (dropout masks) differs from step {victim.step}")
        why = " A Keras seed generator moves its state one step per draw, whatever the draw's size."
    elif shared:
        victim = shared[0]
        after = (f"so later draws on the shared path {_values_moved(victim)} (first: {_draw_text(victim)} at step "
                 f"{victim.step}), and what they draw (dropout masks) differs from step {victim.step}")
    else:
        after = "but no later draw on the shared path moved"
    count = first.evidence.get("count")
    amount = f"{count} random values" if isinstance(count, int) else f"random values from {first.evidence.get('generator')}"
    first.cause = "random_stream_shift"
    first.explanation = f"At step {step}, {_draw_text(first)}{branch} draws {amount} in {run} only, {after}.{why}"
    first.evidence.update(loss_term=term, loss_weight=weight, shifted_draws=len(shifted),
                          first_shifted=shared[0].name if shared else None, changes_shared=bool(shared))
    same_module = [d for d in one_sided if d is not first]
    return [Finding(first, same_module + shifted)]


TF_OP_SEED = "tf-op-seed"  # a stateful TF random op: its stream is chosen by its op seed, not a position
TF_GENERATOR = "tf-random-generator"
KERAS_RANDOM = "keras.random."  # a Keras draw: its SeedGenerator's state moves one step per draw


def _values_moved(victim: Divergence) -> str:
    """How far a shifted draw's stream moved, for generators whose position counts values (torch, TF)."""
    shift = victim.evidence.get("shift")
    if not isinstance(shift, int) or not shift:
        return "start from another generator state"
    return f"start {abs(shift)} values {'later' if shift > 0 else 'earlier'} in {'run B' if shift > 0 else 'run A'}"


def _op_seed_move(context: CompareContext) -> tuple[str, str]:
    """How an added unseeded TF random op moves the others, and why: eagerly, each unseeded op takes the
    next op seed of the global seed's sequence; traced (tf.function, v1 graph), the graph counts them."""
    if context.trace_b.structure.get("mode") == "eager":
        return ("every later unseeded random op takes another op seed",
                " Run eagerly, each unseeded TF random op takes the next op seed of the global seed's sequence.")
    return ("the op seeds of the unseeded random ops traced after it move",
            " An unseeded TF random op's seed counts the unseeded random ops traced before it in the graph.")


def _op_seed_text(context: CompareContext, victim: Divergence) -> str:
    """`, op seed X in run A and Y in run B` for a shifted stateful op, from the two step records."""
    seeds = []
    for trace in (context.trace_a, context.trace_b):
        record = trace.step(victim.step) if victim.step else None
        draws = [d for d in (record or {}).get("random_draws") or [] if isinstance(d, dict)
                 and d.get("generator") == TF_OP_SEED and d.get("module") == victim.evidence.get("module")
                 and d.get("op") == victim.evidence.get("op")]
        seed = draws[0].get("seed") if draws else None
        seeds.append(seed[1] if isinstance(seed, list) and len(seed) == 2 else None)
    if None in seeds or seeds[0] == seeds[1]:
        return ""
    return f", op seed {seeds[0]} in run A and {seeds[1]} in run B"


def nan_through_term(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    origins = [d for d in claims.free(divergences) if d.category == "nan_provenance"]
    nonfinite = [d for d in divergences if d.kind == "nonfinite" and d.category in VALUE_CATEGORIES]
    findings: list[Finding] = []
    for origin in origins:
        evidence = origin.evidence
        weight, term = evidence.get("loss_weight"), evidence.get("loss_term")
        zero = weight == 0.0
        origin.cause = "nan_zero_weight_term" if zero else "nan_weighted_term"
        operands = " and ".join(str(op) for op in evidence.get("inputs_from") or [])
        saved = _saved_nonfinite_text(evidence.get("saved_nonfinite"))
        why = (" A zero weight does not stop it: 0.0 x NaN is NaN, so the total loss carries it into every shared "
               "parameter." if zero else "")
        origin.explanation = (
            f"Loss term {term} with weight {weight} sends NaN/Inf to {evidence.get('parameters')} parameters "
            f"through {evidence.get('node')} ({evidence.get('forward_op')}"
            f"{' of ' + operands if operands else ''}{saved}) in {_module_phrase(evidence.get('module'))} at step "
            f"{origin.step}, in {'run B' if evidence.get('run') == 'b' else 'run A'} only.{why}")
        claimed = [d for d in nonfinite if (d.step or 0) >= (origin.step or 0)] if not findings else []
        origin.evidence["changes_shared"] = bool(evidence.get("parameters"))
        findings.append(Finding(origin, claimed))
    if not origins:
        unexplained = claims.free(d for d in nonfinite if d.category == "gradients")
        if unexplained:
            first = min(unexplained, key=lambda d: d.sort_key())
            first.cause = "nan_weighted_term"
            first.evidence["changes_shared"] = True
            first.explanation = (f"Gradients become NaN/Inf in one run only from step {first.step} (first: "
                                 f"{first.name}); NaN provenance was not recorded, record with "
                                 f"capture.nan_provenance: true to see where it enters.")
            findings.append(Finding(first, [d for d in nonfinite if d is not first]))
    return findings


def hyperparameter_change(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    changes = [d for d in claims.free(divergences) if d.category == "optimizer" and "hyperparameter" in d.evidence]
    by_key: dict[tuple[Any, Any], list[Divergence]] = {}
    for divergence in sorted(changes, key=lambda d: d.sort_key()):
        by_key.setdefault((divergence.evidence["hyperparameter"], divergence.evidence["param_group"]), []).append(divergence)
    findings: list[Finding] = []
    settings = [d for d in claims.free(divergences) if d.category == "optimizer" and "scheduler_setting" in d.evidence]
    for (key, group), steps in by_key.items():
        first = steps[0]
        where = "in the update" if group == "update" else f"of param group {group}"
        label = "Learning rate" if key == "lr" else f"Optimizer hyper-parameter {key}" if group != "update" else \
            f"Update setting {key}"
        others = [d.step for d in steps[1:]]
        later = f" (and at steps {_named(str(s) for s in others)})" if others else ""
        first.cause = "hyperparameter_change"
        first.explanation = (f"{label} {where} differs from step {first.step}: "
                             f"{first.evidence.get('a')!r} in run A, {first.evidence.get('b')!r} in run B{later}; "
                             f"the same gradients then give other updates.")
        first.evidence.update(steps=[d.step for d in steps], changes_shared=True)
        # A scheduler's own settings (max_lr...) go with the learning rate they set.
        claimed = steps[1:] + (settings if key == "lr" and not findings else [])
        findings.append(Finding(first, claimed))
    findings.extend(_gradient_scaling(divergences, claims))
    return findings


def _gradient_scaling(divergences: list[Divergence], claims: Claims) -> list[Finding]:
    """Backward gave the same gradients, the optimizer received them scaled otherwise: clipping or loss
    scaling between the two differs (seen in attach mode, where that code is the user's)."""
    gradient_steps = {d.step for d in divergences if d.category == "gradients"}
    scaled = sorted((d for d in claims.free(divergences) if d.category == "optimizer" and d.evidence.get("measured")
                     and d.step not in gradient_steps), key=lambda d: d.sort_key())
    if not scaled:
        return []
    first = scaled[0]
    first.evidence["changes_shared"] = True
    norms = first.evidence.get("norm_backward") or {}
    first.cause = "hyperparameter_change"
    first.explanation = (
        f"From step {first.step} the optimizer receives the gradients scaled by {_factor_text(first.evidence.get('a'))} "
        f"in run A and {_factor_text(first.evidence.get('b'))} in run B, while backward computed the same gradients "
        f"(norm {_norm_text(norms.get('a'))}): gradient clipping or loss scaling between backward and "
        f"optimizer.step() differs.")
    return [Finding(first, scaled[1:])]


def _factor_text(value: Any) -> str:
    return "1 (unchanged)" if value is None else f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _norm_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "unknown"


def _module_phrase(path: Any) -> str:
    shown = display_module(path)
    return shown if shown.startswith(("the ", "code ")) else f"module {shown}"


def _draw_text(divergence: Divergence) -> str:
    ops = [op for op in divergence.evidence.get("ops") or [divergence.evidence.get("op")] if op]
    return f"{', '.join(map(str, ops)) or 'an untraced op'} in {display_module(divergence.evidence.get('module'))}"


def _loss_term_of(context: CompareContext, step: int, module: Any) -> tuple[Any, Any]:
    """The loss term the probes attributed `module`'s ops (else its parent's) to, and its weight at `step`."""
    if not module:
        return None, None
    candidates = [str(module), str(module).rsplit(".", 1)[0]]
    for trace in (context.trace_b, context.trace_a):
        ops = (trace.graph(1) or {}).get("ops") or []
        for candidate in candidates:
            terms = {op.get("loss_term") for op in ops if str(op.get("module") or "").startswith(candidate)
                     and op.get("loss_term") not in (None, "shared")}
            if len(terms) == 1:
                term = terms.pop()
                return term, _term_weights(context, step).get(term)
    return None, None


def _saved_nonfinite_text(saved: Any) -> str:
    if not isinstance(saved, dict):
        return ""
    counts = {"-inf": 0, "+inf": 0, "nan": 0}
    for entry in saved.values():
        if isinstance(entry, dict):
            counts["-inf"] += int(entry.get("neginf") or 0)
            counts["+inf"] += int(entry.get("posinf") or 0)
            counts["nan"] += int(entry.get("nan") or 0)
    if counts["-inf"]:
        return f": 0 x -inf where a mask wrote -inf ({counts['-inf']} values)"
    if counts["+inf"] or counts["nan"]:
        return f": its saved inputs hold {counts['+inf']} +inf and {counts['nan']} NaN"
    return ""

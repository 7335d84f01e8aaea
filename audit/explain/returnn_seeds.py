"""RETURNN seeds its random ops in creation order: a layer created earlier moves the seeds of the shared
layers created after it, their initial values and (TF) their dropout masks.

RETURNN's recorder marks such tensors with a generator of RETURNN_SEEDS (probes/returnn). Their seed offset
is the seed itself (TF: the op seed RETURNN gives the layer) or its position in RETURNN's seed sequence
(torch), not a count of values drawn before them, so the general seed-offset rule's words do not fit.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence, display_module
from repro_audit.audit.explain.finding import Claims, Finding
from repro_audit.audit.explain.inputs import _named

RETURNN_SEEDS = {
    "returnn-layer-seed": "RETURNN seeds each layer's random ops from its network's random state, in creation order",
    "returnn-seed-sequence": "RETURNN's torch backend seeds every random op with the next seed of one sequence, "
                             "in creation order",
}


def returnn_seed_shift(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    shifted = sorted((d for d in claims.free(divergences) if d.category == "initialisation" and d.kind == "changed"
                      and d.evidence.get("generator") in RETURNN_SEEDS and _seeds(d) is not None),
                     key=lambda d: d.order)
    if not shifted:
        return []
    first = shifted[0]
    generator = str(first.evidence["generator"])
    for divergence in shifted:
        a, b = _seeds(divergence) or (None, None)
        divergence.explanation = (f"initial values of {divergence.name} differ: {_seed_words(generator, a, b)}.")
    layers = _created_before(context, first.name)
    cause = (f"{_layers_text(layers)}, moves the {'op ' if generator == 'returnn-layer-seed' else ''}seeds of the "
             f"shared layers created after it" if layers else "the layers are created in another order")
    draws = sorted((d for d in claims.free(divergences) if d.category == "random_draws" and d.kind == "changed"),
                   key=lambda d: d.sort_key())
    dropout = ""
    if draws:
        modules = sorted({display_module(d.evidence.get("module")) for d in draws})
        dropout = (f", and the random ops of training in {_named(modules)} draw from other seeds from step "
                   f"{draws[0].step} (dropout masks)")
    a, b = _seeds(first) or (None, None)
    first.cause = "seed_offset_shift"
    first.explanation = (
        f"{'Buffer' if first.evidence.get('tensor_kind') == 'buffer' else 'Parameter'} {first.name} got other "
        f"initial values: {cause} ({RETURNN_SEEDS[generator]}); {_seed_words(generator, a, b)}. "
        f"{len(shifted) - 1} tensors created after it are shifted as well{dropout}.")
    first.evidence.update(drawn_by=layers, shifted_tensors=len(shifted), shifted_draws=len(draws), changes_shared=True)
    return [Finding(first, shifted[1:] + draws)]


def _seeds(divergence: Divergence) -> tuple[int, int] | None:
    offset = divergence.evidence.get("seed_offset")
    if not isinstance(offset, dict) or not all(isinstance(offset.get(side), int) for side in "ab"):
        return None
    return (offset["a"], offset["b"]) if offset["a"] != offset["b"] else None


def _seed_words(generator: str, a: Any, b: Any) -> str:
    if generator == "returnn-layer-seed":
        return f"its op seed is {a} in run A and {b} in run B"
    return f"it takes the {_ordinal(a)} seed of the sequence in run A and the {_ordinal(b)} in run B"


def _ordinal(position: Any) -> str:
    number = int(position) + 1
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _created_before(context: CompareContext, name: str) -> list[dict[str, Any]]:
    """Layers (modules) whose tensors one run creates before `name` and the other run does not have."""
    tensors = {side: sorted((t for t in trace.initialisation.get("tensors") or [] if isinstance(t, dict)),
                            key=lambda t: t.get("creation_index") or 0)
               for side, trace in (("a", context.trace_a), ("b", context.trace_b))}
    found: list[dict[str, Any]] = []
    for side, other in (("b", "a"), ("a", "b")):
        names = {str(t.get("name")) for t in tensors[other]}
        before = []
        for tensor in tensors[side]:
            if tensor.get("name") == name:
                break
            if str(tensor.get("name")) not in names:
                before.append(tensor)
        for module in dict.fromkeys(str(t.get("module") or t.get("name")) for t in before):
            found.append({"module": module, "run": side, "tensors": [t["name"] for t in before
                                                                     if str(t.get("module") or t.get("name")) == module]})
    return found


def _layers_text(layers: list[dict[str, Any]]) -> str:
    parts = [f"{display_module(layer['module'])}, created before it only in run {layer['run'].upper()}"
             for layer in layers]
    noun = "the layer" if len(layers) == 1 else "the layers"
    return f"{noun} {'; '.join(parts)}"


def returnn_session_restart(divergences: list[Divergence], context: CompareContext, claims: Claims
                            ) -> list[Finding]:
    """RETURNN builds a new network in a new session when the net dict changes (a pretrain's next network):
    every stateful random op's kernel, and so its stream, starts anew there, in that run only."""
    moved = sorted((d for d in claims.free(divergences) if d.category == "random_draws" and d.kind == "changed"
                    and d.evidence.get("generator") == "tf-op-seed"), key=lambda d: d.sort_key())
    if not moved or moved[0].step is None:
        return []
    first, step = moved[0], moved[0].step
    built = {side: step in (trace.structure.get("graph_steps") or [])
             for side, trace in (("a", context.trace_a), ("b", context.trace_b))}
    runs = {side: _kernel_runs(trace, first) for side, trace in (("a", context.trace_a), ("b", context.trace_b))}
    rebuilt = [side for side in "ab" if built[side] and runs[side] == 0]
    if step == 1 or len(rebuilt) != 1:
        return []
    run = f"run {rebuilt[0].upper()}"
    first.cause = "random_stream_shift"
    first.explanation = (
        f"At step {step} RETURNN built a new network in a new session in {run} only, and a new session starts "
        f"every random op's stream anew: {first.name} ran {runs['a']} times before in run A and {runs['b']} in "
        f"run B, so its draws (dropout masks) differ from step {step}; {len(moved) - 1} later draws as well.")
    first.evidence.update(kernel_runs=runs, new_session=rebuilt[0], changes_shared=True)
    return [Finding(first, moved[1:])]


def _kernel_runs(trace: Any, draw: Divergence) -> int | None:
    """How often the draw's kernel ran before, from its ledger entry (`seed_state`: seed, seed2, runs)."""
    record = trace.step(draw.step) if draw.step else None
    for entry in (record or {}).get("random_draws") or []:
        if isinstance(entry, dict) and entry.get("module") == draw.evidence.get("module") \
                and entry.get("op") == draw.evidence.get("op") and len(entry.get("seed_state") or []) == 3:
            return int(entry["seed_state"][2])
    return None

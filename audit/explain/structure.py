"""Causes 3 and 4: another graph, and parameters initialised from another position of the random stream."""

from __future__ import annotations

from collections import Counter
from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence, display_module
from repro_audit.audit.explain.finding import Claims, Finding
from repro_audit.audit.explain.inputs import _named


def graph_change(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    findings = []
    modules = claims.free(d for d in divergences if d.category == "graph" and d.step is None)
    if modules:
        added = [d for d in modules if d.kind == "added"]
        removed = [d for d in modules if d.kind == "removed"]
        text = []
        if added:
            text.append(f"run B has {len(added)} modules run A lacks ({_named(d.evidence.get('module') for d in added)})")
        if removed:
            text.append(f"run A has {len(removed)} modules run B lacks "
                        f"({_named(d.evidence.get('module') for d in removed)})")
        others = [d for d in modules if d.kind not in ("added", "removed")]
        if others:
            text.append(f"{len(others)} modules are renamed or of another type")
        # A summary over the module divergences it claims (they are the items counted).
        root = Divergence("graph", "module tree", "changed", cause="graph_change", order=-1, counted=False,
                          explanation=f"The model is built differently: {'; '.join(text)}.",
                          evidence={"added": [d.evidence.get("module") for d in added],
                                    "removed": [d.evidence.get("module") for d in removed]})
        findings.append(Finding(root, modules))
    for divergence in claims.free(d for d in divergences if d.category == "graph" and d.step is not None):
        step = divergence.step or 0
        divergence.cause = "graph_change"
        weights = _term_weights(context, step)
        zero_terms = sorted({g["loss_term"] for g in divergence.evidence.get("by_group") or []
                             if weights.get(g["loss_term"]) == 0.0})
        if zero_terms:
            divergence.explanation = (divergence.explanation.rstrip(".") + f"; loss terms {', '.join(zero_terms)} "
                                      "have weight 0.0, yet their ops run: a no-op by weight is still another "
                                      "computation.")
        consequences = [d for d in divergences if d.step == step and d.kind in ("added", "removed")
                        and d.category in ("module_outputs", "loss_terms")]
        findings.append(Finding(divergence, consequences))
    return findings


def seed_offset_shift(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    shifted = [d for d in claims.free(divergences) if d.category == "initialisation" and d.kind == "changed"
               and _shift(d) not in (None, 0)]
    if not shifted:
        return []
    first = min(shifted, key=lambda d: d.order)
    offset = first.evidence["seed_offset"]
    shift = _shift(first) or 0
    longer = "b" if shift > 0 else "a"
    units = OFFSET_UNITS.get(str(first.evidence.get("generator")))
    shorter = "a" if longer == "b" else "b"
    culprits = _draws_before(context, longer, offset[longer], offset[shorter])
    run = "run B" if longer == "b" else "run A"
    if culprits:
        by = "by " + _named(_culprit_text(c, run, units) for c in culprits)
    else:
        by = "by draws the build record does not name"
    first.cause = "seed_offset_shift"
    first.explanation = (
        f"{_tensor_word(first)} {first.name} got other initial values because {abs(shift)} more "
        f"{units[0] if units else 'random values were drawn'} before it in {run} ({offset['a']} vs {offset['b']}), "
        f"{by}; {len(shifted) - 1} tensors created after it are shifted as well.")
    first.evidence.update(shift=shift, drawn_by=culprits, shifted_tensors=len(shifted), changes_shared=True)
    moved = [d for d in divergences if d.category == "initialisation" and d.kind in ("moved", "renamed")]
    others = [d for d in shifted if d is not first]
    return [Finding(first, others + moved)]


def build_stream_shift(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    """Training's draws all start elsewhere because building the model drew another number of values: a
    module added after the shared ones moves no initial value, yet every dropout mask of training."""
    shifted = sorted((d for d in claims.free(divergences) if d.category == "random_draws" and d.kind == "changed"),
                     key=lambda d: d.sort_key())
    if not shifted:
        return []
    first = shifted[0]
    generator = first.evidence.get("generator")
    totals = {side: _build_draws(trace, generator) for side, trace in (("a", context.trace_a), ("b", context.trace_b))}
    if totals["a"] == totals["b"]:
        return []
    longer = "b" if totals["b"] > totals["a"] else "a"
    run = "run B" if longer == "b" else "run A"
    extra = abs(totals["b"] - totals["a"])
    culprits = _draws_before(context, longer, 1 << 62, None)
    by = ", by " + _named(_culprit_text(c, run, None) for c in culprits) if culprits else ""
    first.cause = "random_stream_shift"
    first.explanation = (
        f"Building the model drew {extra} more random values from {generator} in {run}{by}, so every draw of "
        f"training starts elsewhere in the stream: the first, {_ops(first)} in "
        f"{display_module(first.evidence.get('module'))} at step {first.step}, and what they draw (dropout masks) "
        f"differs from there.")
    first.evidence.update(build_draws=totals, drawn_by=culprits, changes_shared=True)
    return [Finding(first, shifted[1:])]


def _build_draws(trace: Any, generator: Any) -> int:
    return sum(int(d.get("count") or 0) for d in trace.initialisation.get("draws") or []
               if isinstance(d, dict) and d.get("generator") == generator and isinstance(d.get("count"), int))


def _ops(divergence: Divergence) -> str:
    ops = [op for op in divergence.evidence.get("ops") or [divergence.evidence.get("op")] if op]
    return ", ".join(map(str, ops)) or "an untraced op"


# What a seed offset counts, by the generator the tensor drew from (docs/tensorflow.md): torch counts random
# values; a TF graph's op seed counts the random ops seeded before it; Keras 3 counts the seeds it drew from
# Python's random. For these, a ledger entry is one unit, and the culprits are named by op.
OFFSET_UNITS = {"tf-op-seed": ("random ops were seeded", "random op"),
                "keras-seed-generator": ("Keras seeds were drawn", "seed")}


def _tensor_word(divergence: Divergence) -> str:
    """A buffer (a Keras SeedGenerator's state, batch-norm statistics) is not called a parameter."""
    return "Buffer" if divergence.evidence.get("tensor_kind") == "buffer" else "Parameter"


def _culprit_text(culprit: dict[str, Any], run: str, units: tuple[str, str] | None) -> str:
    other = "run A" if run == "run B" else "run B"
    only = f", only in {run}" if culprit["only_here"] else f", drawn after it in {other}"
    module = display_module(culprit["module"])
    if units is None:
        return f"{module} ({culprit['count']} values{only})"
    draws = culprit["draws"]
    return f"{module} ({draws} {units[1]}{'s' if draws != 1 else ''}: {_named(culprit['ops'])}{only})"


def _shift(divergence: Divergence) -> int | None:
    offset = divergence.evidence.get("seed_offset")
    if not isinstance(offset, dict) or not isinstance(offset.get("a"), int) or not isinstance(offset.get("b"), int):
        return None
    return offset["b"] - offset["a"]


def _draws_before(context: CompareContext, side: str, limit: int, other_limit: Any) -> list[dict[str, Any]]:
    """Build-time draws before the tensor in run `side` (offset `limit`) that the other run did not make
    before it (offset `other_limit`): draws only this run makes, and draws the other run makes after the
    tensor (another creation order). Summed per module."""
    trace, other = (context.trace_b, context.trace_a) if side == "b" else (context.trace_a, context.trace_b)
    rename = context.parameters.a_to_b if side == "b" else context.parameters.b_to_a
    other_draws = [d for d in other.initialisation.get("draws") or [] if isinstance(d, dict)]
    other_modules = {_renamed_module(d, rename) for d in other_draws}
    other_limit = other_limit if isinstance(other_limit, int) else None
    unmatched = Counter((d.get("module"), d.get("op"), d.get("count"), rename.get(str(d.get("target")), d.get("target")))
                        for d in other_draws
                        if other_limit is None or _offset(d) < other_limit)
    counts: dict[Any, dict[str, Any]] = {}
    for draw in trace.initialisation.get("draws") or []:
        if not isinstance(draw, dict):
            continue
        if _offset(draw) >= limit:
            break
        key = (draw.get("module"), draw.get("op"), draw.get("count"), draw.get("target"))
        if unmatched[key] > 0:
            unmatched[key] -= 1  # the other run made the same draw before the tensor too
            continue
        module = draw.get("module")
        entry = counts.setdefault(module, {"module": module, "count": 0, "draws": 0, "ops": [],
                                           "only_here": module not in other_modules})
        entry["count"] += int(draw.get("count") or 0)
        entry["draws"] += 1
        entry["ops"].append(str(draw.get("name") or draw.get("target") or draw.get("op")))
    return sorted(counts.values(), key=lambda entry: -entry["count"])


def _renamed_module(draw: dict[str, Any], rename: dict[str, str]) -> Any:
    """The module of a draw under the other run's names: Keras's `dense_1` in run A is `dense_2` in run B
    when a layer was added before it, and is not the `dense_1` that run B added."""
    target = draw.get("target")
    if isinstance(target, str) and rename.get(target, target) != target:
        return rename[target].rpartition(".")[0] or rename[target].rpartition("/")[0]
    return draw.get("module")


def _offset(draw: dict[str, Any]) -> int:
    offset = draw.get("offset_before")
    return offset if isinstance(offset, int) and not isinstance(offset, bool) else 0


def _term_weights(context: CompareContext, step: int) -> dict[str, Any]:
    weights: dict[str, Any] = {}
    for records in (context.steps_a, context.steps_b):
        for name, term in ((records.get(step) or {}).get("loss_terms") or {}).items():
            weights.setdefault(name, (term or {}).get("weight"))
    return weights

"""The anomaly rules: one small function per anomaly over the health records of a run.

Each rule reads `RunHealth` (the `health` key of every step record, the step-1 loss terms and graph) and
returns findings; none of them prints. A layer that crosses a threshold at several steps is one finding:
its first step and value, every step it held at, and the worst value when a later step was worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from repro_audit.audit.health.classes import ClassCount, infer_num_classes
from repro_audit.audit.health.findings import Finding, Thresholds, format_number, format_share
from repro_audit.audit.trace.health_fill import complete_health

MIB = 2**20


@dataclass
class RunHealth:
    """What the rules read: `(step, health)` for every step that has health statistics."""

    records: list[tuple[int, dict[str, Any]]]
    loss_terms: dict[str, float] = field(default_factory=dict)  # step-1 value of every loss term
    graph: dict[str, Any] | None = None  # the step-1 op graph, for inferring class counts
    # Step 1's per-term attribution: term -> (weight, the parameters its gradient reaches).
    term_reach: dict[str, tuple[float, set[str]]] = field(default_factory=dict)

    @classmethod
    def from_steps(cls, steps: Sequence[Mapping[str, Any]], *, graph: dict[str, Any] | None = None) -> RunHealth:
        """Step records as written or as a trace reads them: a compact `health` is completed here (without
        module types, which only a trace's structure.json knows)."""
        records = [(int(record["step"]), complete_health(record) or {}) for record in steps
                   if isinstance(record.get("health"), dict)]
        first = next((record for record in steps if record.get("step") == 1), None)
        terms = (first or {}).get("loss_terms") or {}
        values = {str(name): float(entry["value"]) for name, entry in terms.items()
                  if isinstance(entry, dict) and isinstance(entry.get("value"), (int, float))}
        reach = {str(term): (float(entry.get("weight", 1.0)),
                             set(entry.get("nonzero") or {}) | set(entry.get("nonfinite") or {}))
                 for term, entry in ((first or {}).get("term_attribution") or {}).items()
                 if isinstance(entry, dict) and isinstance(entry.get("weight", 1.0), (int, float))}
        return cls(records=records, loss_terms=values, graph=graph, term_reach=reach)

    def zero_weight_only(self, layer: str) -> list[str]:
        """The zero-weighted terms that alone reach `layer`'s parameters (a probe head, say): its gradient is
        0 x something by design, not vanishing. Empty when a weighted term reaches it, or nothing is known."""
        prefix = f"{layer}." if layer else ""
        reaching = {term: weight for term, (weight, params) in self.term_reach.items()
                    if any(param.startswith(prefix) for param in params)}
        if not reaching or any(weight != 0.0 for weight in reaching.values()):
            return []
        return sorted(reaching)

    def first_nonfinite_step(self) -> int | None:
        """The first step with a non-finite gradient norm in any layer: every finding from there on is about
        the NaN, not the layer."""
        steps = [step for step, layer, stats in _layers(self) if _nonfinite(stats.get("grad_norm"))]
        return min(steps) if steps else None

    def initial_loss(self) -> dict[str, Any]:
        first = next((health for step, health in self.records if step == 1), None)
        return dict((first or {}).get("initial_loss") or {})

    def class_counts(self) -> dict[str, ClassCount]:
        """Class count per loss term: what the recipe declared, else what the step-1 graph shows."""
        inferred = infer_num_classes(self.graph) if self.graph else {}
        counts = dict(inferred)
        for term, entry in self.initial_loss().items():
            # A count the recipe declares is the model's; where the graph shows which terms are
            # classification losses, only those get it (an auxiliary or regression term is no uniform guess).
            if isinstance(entry, dict) and entry.get("num_classes") and (not inferred or term in inferred):
                counts[term] = ClassCount(int(entry["num_classes"]), "declared by the recipe")
        return counts


Hit = tuple[int, float, dict[str, Any]]  # (step, value, evidence)


def nonfinite_gradients(run: RunHealth, limits: Thresholds) -> list[Finding]:
    """Gradients that turn NaN or Inf: one finding for the run, at the first step and its first layer, with
    every layer it reached; the NaN provenance of a comparison says where it came from."""
    first = run.first_nonfinite_step()
    if first is None:
        return []
    layers = [layer for step, layer, stats in _layers(run) if step == first and _nonfinite(stats.get("grad_norm"))]
    steps = sorted({step for step, _, stats in _layers(run) if _nonfinite(stats.get("grad_norm"))})
    value = float(next(stats["grad_norm"] for step, layer, stats in _layers(run)
                       if step == first and layer == layers[0]))
    return [Finding(rule="nonfinite_gradients", layer=layers[0], step=first, measure="gradient norm", value=value,
                    threshold=math.inf, steps=steps,
                    message=f"gradients are {format_number(value)} from step {first} in {len(layers)} layer"
                            f"{'s' if len(layers) != 1 else ''} (first: {_layer_name(layers[0])}); later "
                            f"gradient and activation findings would only echo it",
                    evidence={"layers": layers})]


def _nonfinite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isfinite(value)


def exploding_gradients(run: RunHealth, limits: Thresholds) -> list[Finding]:
    """A layer's finite gradient norm above `max_grad_norm` (non-finite ones: nonfinite_gradients)."""
    hits: dict[str, list[Hit]] = {}
    for step, layer, stats in _layers(run):
        norm = stats.get("grad_norm")
        if norm is not None and math.isfinite(norm) and norm > limits.max_grad_norm:
            hits.setdefault(layer, []).append((step, norm, {"grad_max_abs": stats.get("grad_max_abs"),
                                                            "type": stats.get("type")}))
    return [_finding("exploding_gradients", layer, found, measure="gradient norm", threshold=limits.max_grad_norm,
                     worse=max, message=f"gradient norm {format_number(found[0][1])} > {format_number(limits.max_grad_norm)}")
            for layer, found in hits.items()]


def vanishing_gradients(run: RunHealth, limits: Thresholds) -> list[Finding]:
    """A layer's gradient norm below `min_grad_norm`, or below `min_grad_ratio` of the largest layer's."""
    hits: dict[str, list[Hit]] = {}
    for step, health in run.records:
        layers = health.get("layers") or {}
        norms = {layer: stats["grad_norm"] for layer, stats in layers.items()
                 if stats.get("grad_norm") is not None and math.isfinite(stats["grad_norm"])}
        if not norms:
            continue
        top_layer = max(norms, key=lambda layer: norms[layer])
        top = norms[top_layer]
        for layer, norm in norms.items():
            if run.zero_weight_only(layer):
                continue  # only zero-weighted terms reach it: a zero gradient is what they ask for
            ratio = norm / top if top > 0 else 1.0
            if norm < limits.min_grad_norm or ratio < limits.min_grad_ratio:
                threshold = limits.min_grad_norm if norm < limits.min_grad_norm else limits.min_grad_ratio
                hits.setdefault(layer, []).append((step, norm, {"ratio_to_largest": ratio, "threshold": threshold,
                                                                "largest_layer": top_layer, "largest": top,
                                                                "type": layers[layer].get("type")}))
    return [_finding("vanishing_gradients", layer, found, measure="gradient norm", threshold=found[0][2]["threshold"],
                     worse=min, message=_vanishing_sentence(found[0][1], found[0][2], limits))
            for layer, found in hits.items()]


def saturation(run: RunHealth, limits: Thresholds) -> list[Finding]:
    """A tanh or sigmoid output with more than `saturation` of its values saturated."""
    hits: dict[str, list[Hit]] = {}
    for step, entry in _activations(run):
        share = entry.get("saturated_share")
        if share is not None and share > limits.saturation:
            hits.setdefault(output_name(entry), []).append((step, share, {"kind": entry.get("kind"),
                                                                           "type": entry.get("type")}))
    return [_finding("saturation", layer, found, measure="saturated share", threshold=limits.saturation, worse=max,
                     message=f"{format_share(found[0][1])} of the {found[0][2]['kind']} output is saturated "
                             f"(> {format_share(limits.saturation)})")
            for layer, found in hits.items()]


def dead_units(run: RunHealth, limits: Thresholds) -> list[Finding]:
    """A ReLU-like output where more than `dead_units` of the units are never positive in the batch."""
    hits: dict[str, list[Hit]] = {}
    for step, entry in _activations(run):
        share = entry.get("dead_share")
        if share is not None and share > limits.dead_units:
            hits.setdefault(output_name(entry), []).append(
                (step, share, {"dead_units": entry.get("dead_units"), "units": entry.get("units"),
                               "type": entry.get("type")}))
    return [_finding("dead_units", layer, found, measure="dead unit share", threshold=limits.dead_units, worse=max,
                     message=f"{found[0][2]['dead_units']} of {found[0][2]['units']} units ({format_share(found[0][1])}) "
                             f"never positive in the batch (> {format_share(limits.dead_units)})")
            for layer, found in hits.items()]


def initial_loss(run: RunHealth, limits: Thresholds) -> list[Finding]:
    """A classification term whose step-1 value is far from -log(1/C), the loss of a uniform guess."""
    findings = []
    values = {**run.loss_terms, **{term: entry["value"] for term, entry in run.initial_loss().items()
                                   if isinstance(entry, dict) and entry.get("value") is not None}}
    for term, count in sorted(run.class_counts().items()):
        value = values.get(term)
        if value is None:
            continue
        expected = math.log(count.classes)
        deviation = abs(value - expected) / expected if math.isfinite(value) else math.inf
        if deviation > limits.initial_loss_tolerance:
            findings.append(Finding(
                rule="initial_loss", layer=term, step=1, measure="initial loss", value=value,
                threshold=limits.initial_loss_tolerance, steps=[1],
                message=(f"step-1 loss {format_number(value)} vs -log(1/{count.classes}) = {format_number(expected)} "
                         f"({format_share(deviation)} off, > {format_share(limits.initial_loss_tolerance)}); "
                         f"classes {count.source}"),
                evidence={"expected": expected, "num_classes": count.classes, "source": count.source,
                          "deviation": deviation}))
    return findings


def memory_growth(run: RunHealth, limits: Thresholds) -> list[Finding]:
    """Memory that grows by at least `memory_growth_mb` at every step from step 2 on.

    Step 1 is left out: it allocates the optimizer state and warms the allocators. Live allocations
    (glibc's heap in use, CUDA allocated) are judged, since RSS keeps freed memory and wanders by tens of
    MiB for a few steps in a healthy run. RSS is judged where the heap cannot be read, and where the heap
    grew on average by the threshold without growing at every step: a framework allocator that pools
    (TensorFlow's BFC allocator, where oneDNN is on) hands tensors out of blocks it reserved, so the heap
    jumps by a whole block every few steps while the resident size grows with the tensors kept. Such an
    allocator can also serve one step from pages it touched before, so there, over four steps or more,
    RSS may stand still at one of them (and must never shrink by the threshold).
    """
    findings: list[Finding] = []
    heap = _series(run, "heap_in_use")
    for key, label in _memory_series(run):
        series = _series(run, key)
        if len(series) < limits.memory_min_steps + 1:
            continue
        pooled = key == "rss" and bool(heap)  # RSS stands in for a heap that grew by blocks, if it did
        heap_flagged = any(finding.layer == HEAP_LABEL for finding in findings)
        if pooled and (heap_flagged or not _grew_on_average(heap, limits)):
            continue
        # Per step: the TF heap is read only at some steps after the first few (probes/tf/health.py).
        deltas = [(b - a) / MIB / (step_b - step_a) for (step_a, a), (step_b, b) in pairwise(series)]
        pauses = sum(delta < limits.memory_growth_mb for delta in deltas)
        allowed = 1 if pooled and len(deltas) >= 4 else 0
        if pauses > allowed or min(deltas) <= -limits.memory_growth_mb:
            continue
        mean = sum(deltas) / len(deltas)
        first, last = series[0], series[-1]
        how = "at every step" if not pauses else f"at {len(deltas) - pauses} of {len(deltas)} steps"
        grown = [delta for delta in deltas if delta >= limits.memory_growth_mb]
        findings.append(Finding(
            rule="memory_growth", layer=label, step=series[1][0], measure="growth per step (MiB)",
            value=mean, threshold=limits.memory_growth_mb, steps=[step for step, _ in series[1:]],
            message=(f"{label} grew {how} from step {first[0]} to {last[0]}, by {min(grown):.1f} "
                     f"to {max(grown):.1f} MiB (>= {limits.memory_growth_mb:g}): {first[1] / MIB:.0f} -> "
                     f"{last[1] / MIB:.0f} MiB; a loss or output kept as a tensor keeps its graph alive"),
            evidence={"bytes": {str(step): value for step, value in series}, "growth_mib": deltas,
                      "mean_growth_mib": mean}))
    return findings


HEAP_LABEL = "CPU heap in use"
# Rules about gradients and activations: from the first non-finite step on they only echo the NaN.
ECHOES_OF_NAN = frozenset({"exploding_gradients", "vanishing_gradients", "saturation", "dead_units"})


def _series(run: RunHealth, key: str) -> list[tuple[int, int]]:
    """(step, bytes) of one memory figure from step 2 on, where it was read."""
    return [(step, health["memory"][key]) for step, health in run.records
            if step >= 2 and (health.get("memory") or {}).get(key) is not None]


def _grew_on_average(series: list[tuple[int, int]], limits: Thresholds) -> bool:
    steps = series[-1][0] - series[0][0] if series else 0
    return steps > 0 and (series[-1][1] - series[0][1]) / MIB >= limits.memory_growth_mb * steps


def _memory_series(run: RunHealth) -> list[tuple[str, str]]:
    memory = [health.get("memory") or {} for _, health in run.records]
    series = []
    if any(m.get("heap_in_use") is not None for m in memory):
        series.append(("heap_in_use", HEAP_LABEL))
    series.append(("rss", "process RSS"))
    series.append(("cuda_allocated", "CUDA allocated"))
    return series


Rule = Callable[[RunHealth, Thresholds], list[Finding]]
RULES: tuple[tuple[str, Rule], ...] = (
    ("nonfinite_gradients", nonfinite_gradients),
    ("exploding_gradients", exploding_gradients),
    ("vanishing_gradients", vanishing_gradients),
    ("saturation", saturation),
    ("dead_units", dead_units),
    ("initial_loss", initial_loss),
    ("memory_growth", memory_growth),
)


# -- parts ---------------------------------------------------------------------------------------------


def _layers(run: RunHealth) -> Iterator[tuple[int, str, dict[str, Any]]]:
    for step, health in run.records:
        for layer, stats in (health.get("layers") or {}).items():
            yield step, layer, stats


def _activations(run: RunHealth) -> Iterator[tuple[int, dict[str, Any]]]:
    for step, health in run.records:
        for entry in health.get("activations") or []:
            yield step, entry


def output_name(entry: Mapping[str, Any]) -> str:
    """A module output as findings name it: the module path, `#k` for its k-th call after the first."""
    call = entry.get("call", 0)
    return f"{entry['module']}#{call}" if call else str(entry["module"])


def _finding(rule: str, layer: str, hits: list[Hit], *, measure: str, threshold: float,
             worse: Callable[..., float], message: str) -> Finding:
    """One finding from every hit of one layer: the first hit's numbers, the worst one's if later."""
    step, value, evidence = hits[0]
    worst_step, worst_value, _ = hits[0]
    for hit_step, hit_value, _ in hits[1:]:
        if _is_worse(hit_value, worst_value, worse):
            worst_step, worst_value = hit_step, hit_value
    worst = {"step": worst_step, "value": worst_value} if worst_step != step else None
    return Finding(rule=rule, layer=layer, step=step, measure=measure, value=value, threshold=threshold,
                   message=message, steps=[hit[0] for hit in hits], worst=worst, evidence=evidence)


def _is_worse(candidate: float, current: float, worse: Callable[..., float]) -> bool:
    if math.isnan(current):
        return False
    if math.isnan(candidate):
        return True
    return candidate != current and worse(candidate, current) == candidate


def _vanishing_sentence(value: float, evidence: Mapping[str, Any], limits: Thresholds) -> str:
    if value == 0:
        return "every gradient is exactly 0"
    if value < limits.min_grad_norm:
        return f"gradient norm {format_number(value)} < {format_number(limits.min_grad_norm)}"
    return (f"gradient norm {format_number(value)} is {format_number(evidence['ratio_to_largest'])} of the largest layer's "
            f"({format_number(evidence['largest'])} at {_layer_name(evidence['largest_layer'])}) "
            f"< {format_number(limits.min_grad_ratio)}")


def _layer_name(layer: str) -> str:
    return layer if layer else "(root)"

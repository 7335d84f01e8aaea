"""Which intervention neutralises which mechanism: from the comparison's named causes to run-B configs.

One intervention per mechanism (audit/mechanisms.py). A mechanism that no intervention on run B can undo
(NaN that enters in run A, draws made only in run A, a graph change, which changes no number by itself) is
listed as untested with the reason, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.divergence import Comparison
from repro_audit.audit.mechanisms import Mechanism
from repro_audit.audit.trace import Trace


@dataclass
class Intervention:
    """What is done to run B, which mechanism it neutralises, and the config's `interventions` part."""

    label: str
    cause: str
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass
class Untested:
    cause: str
    reason: str


def plan(comparison: Comparison, trace_a: Trace) -> tuple[list[Intervention], list[Untested]]:
    """The interventions for the comparison's mechanisms, most telling first, and what stays untested."""
    interventions: list[Intervention] = []
    untested: list[Untested] = []
    only_in_b = _modules_only_in_b(comparison)
    for mechanism in comparison.mechanisms:
        found = _intervention(mechanism, trace_a, only_in_b)
        if isinstance(found, Intervention):
            interventions.append(found)
        else:
            untested.append(Untested(mechanism.cause, found))
    return interventions, untested


def merged(interventions: list[Intervention], reference: str) -> dict[str, Any]:
    """One `interventions` mapping doing all of `interventions` at once."""
    spec: dict[str, Any] = {"reference_trace": reference}
    for intervention in interventions:
        for key, value in intervention.spec.items():
            if isinstance(value, list):
                spec[key] = sorted(set(spec.get(key, [])) | set(value))
            elif isinstance(value, dict):
                spec[key] = _merge_settings(spec.get(key, {}), value)
            else:
                spec[key] = value
    return spec


def _intervention(mechanism: Mechanism, trace_a: Trace, only_in_b: set[str]) -> Intervention | str:
    cause = mechanism.cause
    if cause in ("nan_zero_weight_term", "nan_weighted_term"):
        return _drop_terms(mechanism)
    if cause == "decay_through_zero_gradient":
        terms = sorted({term for d in mechanism.instances if d.evidence.get("zero_gradient_in") == "b"
                        for term in d.evidence.get("loss_terms") or []})
        if not terms:
            return "the zero gradient is in run A, or no loss term reaches the decayed parameters"
        return Intervention(f"drop {_names(terms)} from run B's total", cause, {"drop_terms": terms})
    if cause == "seed_offset_shift":
        return Intervention("run B's shared parameters start from run A's initial values", cause,
                            {"initial_values": True})
    if cause == "random_stream_shift":
        return _stream(mechanism, only_in_b, trace_a.framework)
    if cause == "hyperparameter_change":
        return _hyperparameters(mechanism, trace_a)
    if cause == "data_change":
        return Intervention("run B trains on run A's batches", cause, {"batches": True})
    if cause == "graph_change":
        return ("no intervention: a graph change alone changes no number; it is confirmed when every other "
                "intervention together makes run B match run A on every shared number")
    return f"no intervention undoes {mechanism.title}: record the same config again to see it"


def _drop_terms(mechanism: Mechanism) -> Intervention | str:
    terms = sorted({str(d.evidence["loss_term"]) for d in mechanism.instances
                    if d.evidence.get("loss_term") is not None and d.evidence.get("run") == "b"})
    if not terms:
        return "NaN enters in run A, or its loss term is not known (record with capture.nan_provenance)"
    return Intervention(f"drop {_names(terms)} from run B's total", mechanism.cause, {"drop_terms": terms})


def _stream(mechanism: Mechanism, only_in_b: set[str], framework: str) -> Intervention | str:
    """Build-time draws move where training's draws start; training-time draws in run B's own modules move
    the later ones. Where both happened, both are undone at once: each alone leaves the other's shift."""
    labels: list[str] = []
    spec: dict[str, Any] = {}
    if any("build_draws" in d.evidence for d in mechanism.instances):
        labels.append("run B's training starts from run A's generator state after build")
        spec["rng_after_build"] = True
    training = [d for d in mechanism.instances if "build_draws" not in d.evidence]
    if training:
        private = _private_modules(training, only_in_b, framework)
        if isinstance(private, str):
            return private if not spec else Intervention(labels[0], mechanism.cause, spec)
        labels.append(f"{_names(private)} draw{'s' if len(private) == 1 else ''} from a private generator")
        spec["private_rng_modules"] = private
    return Intervention("; ".join(labels), mechanism.cause, spec)


def _private_modules(instances: list[Any], only_in_b: set[str], framework: str) -> list[str] | str:
    """Run B's own modules that drew during training, or why no private generator can be given."""
    if framework != "torch":
        return "a private generator for the layers only run B has is available for torch runs only"
    modules = sorted({str(d.evidence.get("module")) for instance in instances for d in instance.walk()
                      if d.category == "random_draws" and d.kind == "added" and d.evidence.get("module") is not None})
    private = [module for module in modules if module in only_in_b]
    if not private:
        where = "run A" if not modules else f"{_names(modules)}, which run A has too"
        return f"the extra draws are made in {where}: a private generator there would change run A's own path"
    return private


def _hyperparameters(mechanism: Mechanism, trace_a: Trace) -> Intervention | str:
    found = {(d.evidence.get("hyperparameter"), d.evidence.get("param_group")) for d in mechanism.instances}
    if any(not isinstance(group, int) for _, group in found):
        return "the setting is applied between backward and the update (clipping, scaling), not an optimizer setting"
    keys = [(key, group) for key, group in found if isinstance(group, int)]
    settings: dict[str, dict[str, dict[str, Any]]] = {}
    for record in trace_a.steps:
        groups = (record.get("optimizer") or {}).get("param_groups") or []
        for key, group in keys:
            value = groups[group].get(key) if group < len(groups) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                settings.setdefault(str(record["step"]), {}).setdefault(str(group), {})[str(key)] = value
    if not settings:
        return "run A's trace does not hold the setting's values per step"
    named = _names(sorted({str(key) for key, _ in keys}))
    return Intervention(f"run B uses run A's {named} at every step", mechanism.cause, {"hyperparameters": settings})


def _modules_only_in_b(comparison: Comparison) -> set[str]:
    return {str(d.evidence.get("module")) for d in comparison.walk()
            if d.category == "graph" and d.step is None and d.kind == "added" and d.evidence.get("module")}


def _merge_settings(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in into.items()}
    for key, value in more.items():
        result[key] = _merge_settings(result.get(key, {}), value) if isinstance(value, dict) else value
    return result


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


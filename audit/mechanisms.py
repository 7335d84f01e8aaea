"""The verdict's chain: what the user changed, then the mechanisms by which it changed the numbers.

A user who diffs two configs knows the configs differ; the question is why a loss multiplied by 0.0 changes
the model. So a comparison whose root is an input (config, code, environment) leads with the named causes
that are mechanisms (NaN through a term, a seed-offset shift, a moved random stream...), grouped by cause,
most telling first: one that changed numbers both runs share before one that changed none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repro_audit.audit.divergence import RUN_CATEGORIES, Divergence

if TYPE_CHECKING:
    from repro_audit.audit.divergence import Comparison

INPUT_CATEGORIES = RUN_CATEGORIES[:3]  # environment, code, config: what the user changed
INPUT_CAUSES = frozenset({"environment_change", "code_change", "config_change"})

# How a verdict names each mechanism, in a few words.
MECHANISM_TITLES: dict[str, str] = {
    "nan_zero_weight_term": "NaN through a zero-weighted loss term",
    "nan_weighted_term": "NaN through a loss term",
    "seed_offset_shift": "seed-offset shift of shared parameters",
    "random_stream_shift": "random stream shift",
    "hyperparameter_change": "hyper-parameter change",
    "lr_control_change": "learning-rate control state",
    "data_change": "other training batches",
    "decay_through_zero_gradient": "weight decay through a zero gradient",
    "graph_change": "changed graph",
    "nondeterminism": "run-to-run nondeterminism",
    "fp_reordering": "floating-point reordering",
}

INPUT_NOUNS = {"config": "config", "code": "code", "environment": "environment"}


@dataclass
class Mechanism:
    """One kind of cause with every divergence it was named on, most telling first."""

    cause: str
    instances: list[Divergence] = field(default_factory=list)

    @property
    def title(self) -> str:
        return MECHANISM_TITLES.get(self.cause, self.cause.replace("_", " "))

    @property
    def changes_shared(self) -> bool | None:
        """True when any instance changed numbers both runs share, False when every one said it changed
        none, None when no instance said."""
        said = [d.evidence.get("changes_shared") for d in self.instances]
        if True in said:
            return True
        return False if said and all(value is False for value in said) else None

    @property
    def explanation(self) -> str:
        return self.instances[0].explanation if self.instances else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "title": self.title,
            "changes_shared": self.changes_shared,
            "explanation": self.explanation,
            "instances": [{"category": d.category, "step": d.step, "name": d.name, "explanation": d.explanation}
                          for d in self.instances],
        }


def changed_inputs(comparison: Comparison) -> list[Divergence]:
    """The roots that are inputs the user changed (config, code, environment), in causal order."""
    return [root for root in comparison.divergences if root.step is None and root.category in INPUT_CATEGORIES]


def mechanisms(comparison: Comparison) -> list[Mechanism]:
    """Named causes other than the changed inputs themselves, grouped by cause in the order of
    `Comparison.causes` (shared numbers first, then severity)."""
    grouped: dict[str, Mechanism] = {}
    for divergence in comparison.causes:
        cause = divergence.cause or ""
        if cause in INPUT_CAUSES:
            continue
        grouped.setdefault(cause, Mechanism(cause)).instances.append(divergence)
    return list(grouped.values())


def input_summary(root: Divergence) -> str:
    """`the config (3 keys)`: an input root in a few words, for the chain's first link."""
    noun = INPUT_NOUNS.get(root.category, root.category)
    unit = "key" if root.category == "config" else "difference"
    count = sum(1 for child in root.children if child.category == root.category) if root.cause else 1
    return f"the {noun} ({count} {unit}{'' if count == 1 else 's'})" if count else f"the {noun}"


def chain(comparison: Comparison) -> str | None:
    """`the config (3 keys) -> NaN through a zero-weighted loss term; seed-offset shift...`: the verdict's
    headline when an input changed and a mechanism was named; None otherwise."""
    inputs, found = changed_inputs(comparison), mechanisms(comparison)
    if not inputs or not found:
        return None
    return " and ".join(input_summary(root) for root in inputs) + " -> " + "; ".join(m.title for m in found)

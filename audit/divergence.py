"""The result tree of a comparison: divergences with evidence and consequences.

The differ builds it, explanation rules annotate it, presenters only walk it. "First divergence" is a walk
over this tree in causal order, never a second code path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Iterator

# Causal order of categories: a divergence in an earlier category can cause one in a later one, never the
# reverse. Per-step categories follow execution order within a step.
RUN_CATEGORIES: tuple[str, ...] = (
    "environment",
    "code",
    "config",
    "graph",
    "initialisation",
)
STEP_CATEGORIES: tuple[str, ...] = (
    "data",
    "random_draws",
    "graph",
    "module_outputs",
    "loss_terms",
    "nan_provenance",
    "gradients",
    "optimizer",
    "parameters",
    "buffers",
    "health",
)
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(RUN_CATEGORIES + STEP_CATEGORIES))

# Kinds of divergence. "order" is kept apart from "changed": the same items in another order is its own
# finding (our seed-offset story), as diffoscope marks "ordering differences only".
KINDS: tuple[str, ...] = (
    "changed",  # same item, other content
    "added",  # only in run B
    "removed",  # only in run A
    "renamed",  # matched by shape and position, other name
    "moved",  # same item, other position (creation order, execution order)
    "order",  # same set, other order only
    "nonfinite",  # NaN/Inf in one or both runs
    "incomplete",  # one run stopped early; what could not be compared
    # Across the ranks of one DDP run (audit/diff/compare_ranks.py):
    "desync",  # a rank holds other bits than rank 0 where DDP keeps them equal
    "overlap",  # two ranks train on the same batch
    "repeated",  # a rank's batch repeats one of its own earlier batches
)


# Named causes from the most to the least telling, for what a report puts above the fold: a NaN that a
# zero-weighted term lets through matters more than the config key that added the term.
CAUSE_SEVERITY: tuple[str, ...] = (
    "rank_desync",
    "nan_zero_weight_term",
    "nan_weighted_term",
    "code_change",
    "nondeterminism",
    "data_change",
    "shard_overlap",
    "epoch_repeat",
    "random_stream_shift",
    "seed_offset_shift",
    "hyperparameter_change",
    "lr_control_change",
    "decay_through_zero_gradient",
    "environment_change",
    "graph_change",
    "fp_reordering",
    "config_change",
)


# How a cause ranks by its `changes_shared` evidence: numbers both runs share changed, not said, none changed.
SHARED_RANK: dict[Any, int] = {True: 0, None: 1, False: 2}


@dataclass
class Divergence:
    """One difference between run A and run B, with the facts that show it and what it caused."""

    category: str
    name: str
    kind: str
    step: int | None = None
    explanation: str = ""
    cause: str | None = None  # id of the explanation rule that named the cause, e.g. "seed_offset_shift"
    evidence: dict[str, Any] = field(default_factory=dict)
    children: list[Divergence] = field(default_factory=list)
    # Position in execution order inside its step/category (op index, module call index, creation index);
    # used to sort divergences causally within a category.
    order: int = 0
    # False for a node that is not one more item that differs: a summary an explanation rule wrote over
    # others ("config change", "module tree"), a part of one item (the op groups of one step's graph), or a
    # second finding about an item already counted (a tensor both moved and of other values). Counts skip
    # it, so the category table and the tree count the same things (count_diverged).
    counted: bool = True

    def walk(self) -> Iterator[Divergence]:
        """This divergence, then its consequences, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def sort_key(self) -> tuple[int, int, int, str]:
        step = -1 if self.step is None else self.step
        category_rank = causal_rank(self.category, self.step)
        return (step, category_rank, self.order, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "step": self.step,
            "name": self.name,
            "kind": self.kind,
            "explanation": self.explanation,
            "cause": self.cause,
            "evidence": self.evidence,
            "counted": self.counted,
            "children": [child.to_dict() for child in self.children],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Divergence:
        return cls(
            category=data["category"],
            name=data["name"],
            kind=data["kind"],
            step=data.get("step"),
            explanation=data.get("explanation", ""),
            cause=data.get("cause"),
            evidence=dict(data.get("evidence") or {}),
            counted=bool(data.get("counted", True)),
            children=[cls.from_dict(child) for child in data.get("children") or []],
        )


def count_diverged(divergences: Iterable[Divergence]) -> Counter[str]:
    """Diverged items per category: the counted nodes. The comparators (the category table) and the
    reports' summaries of the tree both count with this, so their numbers agree."""
    return Counter(d.category for d in divergences if d.counted)


def causal_rank(category: str, step: int | None) -> int:
    """Rank of a category in causal order; run-level categories come before every step."""
    if step is None:
        return RUN_CATEGORIES.index(category) if category in RUN_CATEGORIES else len(RUN_CATEGORIES)
    return STEP_CATEGORIES.index(category) if category in STEP_CATEGORIES else len(STEP_CATEGORIES)


@dataclass
class RunInfo:
    """What the report says about one side of the comparison."""

    label: str
    trace_path: str | None  # None when the trace was not kept (`diff` without --keep removes it)
    framework: str
    complete: bool
    steps_recorded: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "trace_path": self.trace_path,
            "framework": self.framework,
            "complete": self.complete,
            "steps_recorded": self.steps_recorded,
            "error": self.error,
        }


@dataclass
class Comparison:
    """The whole result: both runs, the divergence tree in causal order, and the tolerance used."""

    run_a: RunInfo
    run_b: RunInfo
    divergences: list[Divergence] = field(default_factory=list)
    tolerance: dict[str, float] = field(default_factory=lambda: {"rtol": 0.0, "atol": 0.0})
    partial: bool = False  # one run is incomplete: only the steps both recorded were compared
    notes: list[str] = field(default_factory=list)
    # Per category: how many items were compared and how many diverged, for the summary table.
    category_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # Training health of both runs, {"a": ..., "b": ...}, each `HealthReport.as_dict()` or None where that
    # trace recorded no health statistics; None when neither did. Kept apart from the divergence tree: two
    # runs can be identical and equally unhealthy.
    health: dict[str, Any] | None = None
    # `--verify`'s table (repro_audit.audit.verify.Verification): each mechanism neutralised in a re-run of run B, and
    # what that changed. None unless asked for.
    verification: Any = None
    # How far the runs are apart per step (repro_audit.audit.diff.distance.step_distances): per category, per module
    # output in forward order, per parameter's gradient. Plain JSON data; None when not computed.
    distances: dict[str, Any] | None = None
    # Categories the comparison left out (`--ignore`): not compared, so neither clean nor diverged.
    ignored: list[str] = field(default_factory=list)
    # The zoom-in of check/diff (repro_audit.audit.ops.zoom.OpZoom): the first op inside the diverging step whose output
    # differs when both sides are re-run with that module hashed op by op. None unless it ran.
    zoom: Any = None

    @property
    def identical(self) -> bool:
        return not self.divergences

    @property
    def first_divergence(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None

    def walk(self) -> Iterator[Divergence]:
        for root in self.divergences:
            yield from root.walk()

    @property
    def causes(self) -> list[Divergence]:
        """Every divergence an explanation rule named a cause for, most telling first: a mechanism that
        changed numbers both runs share before one that changed none (a draw made in run B only that moved no
        shared draw), then by CAUSE_SEVERITY."""
        named = [divergence for divergence in self.walk() if divergence.cause]
        rank = {cause: index for index, cause in enumerate(CAUSE_SEVERITY)}
        return sorted(named, key=lambda d: (SHARED_RANK.get(d.evidence.get("changes_shared"), 1),
                                            rank.get(d.cause or "", len(rank)), d.sort_key()))

    @property
    def mechanisms(self) -> list[Any]:
        """The verdict's mechanisms (repro_audit.audit.mechanisms.Mechanism), grouped by cause, most telling first."""
        from repro_audit.audit.mechanisms import mechanisms

        return mechanisms(self)

    @property
    def changed_inputs(self) -> list[Divergence]:
        """The roots that are inputs the user changed: config, code, environment."""
        from repro_audit.audit.mechanisms import changed_inputs

        return changed_inputs(self)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {
            "identical": self.identical,
            "changed": [{"category": d.category, "name": d.name, "explanation": d.explanation}
                        for d in self.changed_inputs],
            "mechanisms": [mechanism.to_dict() for mechanism in self.mechanisms],
            "partial": self.partial,
            "run_a": self.run_a.to_dict(),
            "run_b": self.run_b.to_dict(),
            "tolerance": self.tolerance,
            # The root itself, without its children: they are in `divergences[0]` (written once, not twice).
            "first_divergence": {key: value for key, value in first.to_dict().items() if key != "children"}
            if first else None,
            "divergences": [d.to_dict() for d in self.divergences],
            "category_counts": self.category_counts,
            "notes": list(self.notes),
            # Written only when there is something to say, so documents without health read as before.
            **({"health": self.health} if self.health is not None else {}),
            **({"verification": self.verification.to_dict()} if self.verification is not None else {}),
            **({"distances": self.distances} if self.distances is not None else {}),
            **({"ignored": list(self.ignored)} if self.ignored else {}),
            **({"zoom": self.zoom.to_dict()} if self.zoom is not None else {}),
        }


def display_module(path: Any) -> str:
    """A module path as sentences name it: the root module and code outside every module have no path."""
    if path is None:
        return "code outside any module"
    if path == "":
        return "the root module"
    if str(path).startswith("["):  # an output of the root module, named by its place
        return f"the root module{path}"
    return str(path)

"""What `bisect` found: the changes, the minimal subset that reproduces B's first divergence, every test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.bisect.changes import Change


@dataclass(frozen=True)
class Identity:
    """A first divergence as bisect compares it: category, name and step (the explanation is only shown)."""

    category: str
    name: str
    step: int | None
    explanation: str = field(default="", compare=False)

    def describe(self) -> str:
        where = "before training" if self.step is None else f"at step {self.step}"
        return f"{self.category} {self.name} {where}"

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "name": self.name, "step": self.step, "explanation": self.explanation}


@dataclass
class TestedSubset:
    changes: list[str]
    divergence: Identity | None
    failed: str | None = None  # the run of A with these changes failed: why (it does not reproduce)

    def to_dict(self, target: Identity | None) -> dict[str, Any]:
        return {"changes": sorted(self.changes), "reproduces": self.divergence == target and target is not None,
                "first_divergence": self.divergence.to_dict() if self.divergence else None,
                "failed": self.failed}


@dataclass
class BisectResult:
    label_a: str
    label_b: str
    changes: list[Change]
    target: Identity | None
    minimal: list[Change] = field(default_factory=list)
    tested: list[TestedSubset] = field(default_factory=list)
    runs: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.minimal)

    def sentence(self) -> str:
        if not self.found or self.target is None:
            return self.notes[0] if self.notes else "nothing found"
        names = ", ".join(change.name for change in self.minimal)
        count = len(self.minimal)
        return (f"{count} of {len(self.changes)} changes reproduce{'s' if count == 1 else ''} B's first divergence "
                f"({self.target.describe()}): {names}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "bisect",
            "a": self.label_a,
            "b": self.label_b,
            "changes": [change.to_dict() for change in self.changes],
            "first_divergence": self.target.to_dict() if self.target else None,
            "minimal": [change.to_dict() for change in self.minimal],
            "sentence": self.sentence(),
            "tested": sorted((subset.to_dict(self.target) for subset in self.tested),
                             key=lambda item: (len(item["changes"]), item["changes"])),
            "runs": self.runs,
            "notes": list(self.notes),
        }

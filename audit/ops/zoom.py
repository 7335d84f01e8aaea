"""The zoom-in of `check` and `diff`: from the first diverging step down to the first diverging op.

Both sides are re-run up to the diverging step with op-level hashes in the diverging module only, its
forward ops and the backward ops of the autograd nodes they created (see probes/torch/op_hashes.py); their op lists are compared here, in execution order, and the first op whose
name or output bits differ is the answer, with the user's stack where it ran. The module is the earliest
diverging module at that step that holds no other diverging module (the innermost culprit, not the root
that merely contains it); no module output diverged -> the whole step is watched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.divergence import Comparison
from repro_audit.audit.errors import RunFailed

ZOOM_FILE = "zoom.json"  # written by probes/torch/zoom_run.py
# Where an op can be the answer. A first divergence in the data or the random draws is explained by them,
# not by an op: no zoom-in there.
COMPUTED = frozenset({"graph", "module_outputs", "loss_terms", "nan_provenance", "gradients", "optimizer",
                      "parameters", "buffers"})


@dataclass
class OpZoom:
    """Where inside the diverging step the two runs first part, op by op."""

    step: int
    module: str | None
    ops_compared: int
    # index, op, phase, module, node (backward: the autograd node that ran it), dtypes, shapes, stack, reason,
    # hashes. In backward, module and stack are those of the forward op that created the node.
    first_op: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """The finding in one sentence (presenters show it as is)."""
        region = f"module {self.module}" if self.module else "the whole step"
        if self.first_op is None:
            return f"step {self.step}, {region}: no op differed in the re-runs ({self.ops_compared} ops compared)"
        op = self.first_op
        shape = ", ".join(f"{dtype}{shape}" for dtype, shape in zip(op.get("dtypes") or [], op.get("shapes") or []))
        where = f" in {op['module']}" if op.get("module") else ""
        phase = f"backward, node {op['node']}" if op.get("node") else op.get("phase")
        if op["reason"] == "other op":
            what = f"run A ran {op['op']} where run B ran {op.get('op_b')}"
        elif op["reason"] == "output differs":
            what = f"{op['op']} ({phase}){where} gave different bits ({shape})"
        else:
            what = f"{op['op']} ({phase}){where} ran {op['reason']}"
        return f"step {self.step}, {region}: the first diverging op is #{op.get('index')}: {what}"

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "module": self.module, "ops_compared": self.ops_compared,
                "first_op": self.first_op, "notes": list(self.notes), "summary": self.summary}


def zoom_target(comparison: Comparison, module_order: list[str]) -> tuple[int, str | None] | None:
    """(step, module) to zoom into, or None when the first divergence is not inside a step."""
    first = comparison.first_divergence
    if first is None or first.step is None or first.category not in COMPUTED:
        return None
    step = first.step
    diverged = {str(d.evidence.get("module")) for d in comparison.walk()
                if d.category == "module_outputs" and d.step == step and d.evidence.get("module") is not None}
    innermost = [path for path in diverged
                 if not any(other != path and (path == "" or other.startswith(path + ".")) for other in diverged)]
    innermost = [path for path in innermost if path]
    if not innermost:
        return step, None
    rank = {path: index for index, path in enumerate(module_order)}
    return step, min(innermost, key=lambda path: (rank.get(path, len(rank)), path))


def first_diverging_op(ops_a: list[dict[str, Any]], ops_b: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
    """(ops compared, the first op that differs by name or by output hash, with why)."""
    for index, (a, b) in enumerate(zip(ops_a, ops_b)):
        if a.get("op") != b.get("op"):
            return index + 1, {**_shown(a), "reason": "other op", "op_b": b.get("op"), "stack_b": b.get("stack")}
        if a.get("hashes") != b.get("hashes") or a.get("shapes") != b.get("shapes"):
            return index + 1, {**_shown(a), "reason": "output differs",
                               "hashes": {"a": a.get("hashes"), "b": b.get("hashes")}}
    if len(ops_a) != len(ops_b):
        longer, side = (ops_a, "a") if len(ops_a) > len(ops_b) else (ops_b, "b")
        extra = longer[min(len(ops_a), len(ops_b))]
        return min(len(ops_a), len(ops_b)), {**_shown(extra), "reason": f"only in run {side.upper()}"}
    return len(ops_a), None


def _shown(op: dict[str, Any]) -> dict[str, Any]:
    return {key: op.get(key) for key in ("index", "op", "phase", "module", "node", "dtypes", "shapes", "stack")}


def zoom_in(comparison: Comparison, configs: tuple[RunConfig, RunConfig], *, folder: Path,
            module_order: list[str], progress: Callable[[str, int, int], None] | None = None) -> OpZoom | None:
    """Re-run both configs to the diverging step with the module hashed op by op; None where there is no
    step to zoom into or the runs are not torch."""
    target = zoom_target(comparison, module_order)
    if target is None or any(config.framework != "torch" for config in configs):
        return None
    step, module = target
    from repro_audit.audit.executors.local import record_all
    from repro_audit.audit.runner import raise_for_failures

    spec = {"step": step, "module": module}
    jobs = [(_labelled(config, side), folder / f"zoom-{side}") for side, config in zip("ab", configs)]
    results = record_all([(config, path) for config, path in jobs], progress=progress, mode="zoom", zoom=spec)
    raise_for_failures(results, traces_kept=False)
    lists = [_read(path) for _, path in jobs]
    compared, first = first_diverging_op(lists[0]["ops"], lists[1]["ops"])
    notes = []
    if any(item.get("cut") for item in lists):
        notes.append("the region held more ops than are hashed; only the first ones were compared")
    if first is None:
        notes.append(f"the re-runs agreed on all {compared} ops of the region: the nondeterminism did not "
                     f"recur there (repro-audit ops lists every op that can differ)")
    return OpZoom(step=step, module=module, ops_compared=compared, first_op=first, notes=notes)


def _labelled(config: RunConfig, side: str) -> RunConfig:
    from dataclasses import replace

    return replace(config, label=f"{config.label} (zoom {side.upper()})")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / ZOOM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFailed(f"zoom-in: {path.name} wrote no readable {ZOOM_FILE}: {exc}") from None
    return data if isinstance(data, dict) else {"ops": []}

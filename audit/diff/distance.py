"""How far run B is from run A at each step: per category, per module output in forward order, and per
parameter's gradient at a few steps.

The divergence tree says what differs and why; these series say by how much over time, the view in which
nondeterminism grows from 1e-7 to 1e-2 and a NaN step stands out. They are computed here, not in a report,
because presenters never compute, and carried in the Comparison (`Comparison.distances`) as plain JSON data:
lists with one entry per step. docs/json-schema.md describes the fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.tensor_distance import TensorDistance, tensor_distance, value_distance
from repro_audit.audit.divergence import Divergence

# Categories whose items are numbers: a distance means something. Order: as the step computes them.
DISTANCE_CATEGORIES = ("data", "module_outputs", "loss_terms", "gradients", "parameters", "buffers")
MAX_MODULE_ROWS = 400  # module outputs listed; the rest are counted
MAX_MODULE_STEPS = 50  # steps of the per-module series; the category series cover every step
Item = tuple[str, "TensorDistance | None"]


def step_distances(context: CompareContext, divergences: Iterable[Divergence], *,
                   ignored: Iterable[str] = ()) -> dict[str, Any] | None:
    """Every series the reports draw, or None when the runs share no step."""
    steps = context.common_steps
    if not steps:
        return None
    skipped = set(ignored)
    measured = Measured(context, _values_evidence(divergences))
    categories: dict[str, dict[str, list[Any]]] = {}
    for category in DISTANCE_CATEGORIES:
        if category in skipped:
            continue
        per_step = [_aggregate(distance for _, distance in measured.items(category, step)) for step in steps]
        if any(entry["compared"] for entry in per_step):
            categories[category] = _columns(per_step)
    result: dict[str, Any] = {
        "steps": list(steps),
        "categories": categories,
    }
    if "module_outputs" not in skipped:
        result.update(module_series(measured, steps[:MAX_MODULE_STEPS]))
    if "gradients" not in skipped:
        result["gradient_flow"] = gradient_flow(measured, steps)
    return result


class Measured:
    """The distance of every item of a category at a step, measured once and kept: the category series, the
    module rows and the gradient flow read the same items."""

    def __init__(self, context: CompareContext, evidence: dict[tuple[str, int, str], dict[str, Any]]) -> None:
        self.context = context
        self.evidence = evidence
        self._cache: dict[tuple[str, int], list[Item]] = {}

    def items(self, category: str, step: int) -> list[Item]:
        if (category, step) not in self._cache:
            self._cache[(category, step)] = list(_items(self.context, category, step, self.evidence))
        return self._cache[(category, step)]


def module_series(measured: Measured, steps: Sequence[int]) -> dict[str, Any]:
    """Module outputs in forward order, each with its distance per step (calls of a module merged), and the
    first one that differs: the first in forward order at the first step where any differs."""
    context = measured.context
    order = forward_order(context, steps)
    seen = [{name for step in steps for name in _output_names(records[step])}
            for records in (context.steps_a, context.steps_b)]
    rows = {name: _empty_row(name, name in seen[0], name in seen[1], len(steps)) for name in order}
    for index, step in enumerate(steps):
        grouped: dict[str, list[TensorDistance | None]] = {}
        for key, distance in measured.items("module_outputs", step):
            grouped.setdefault(key.rsplit("#", 1)[0], []).append(distance)
        for name, distances in grouped.items():
            if name in rows:
                _fill(rows[name], index, _aggregate(distances))
    first = None
    for index, step in enumerate(steps):
        differing = [name for name in order if rows[name]["differs"][index]]
        if differing:
            first = {"name": first_differing(differing), "step": step}
            break
    shown = order[:MAX_MODULE_ROWS]
    return {"module_steps": list(steps), "modules": [rows[name] for name in shown],
            "modules_cut": len(order) - len(shown), "first_module": first}


def first_differing(differing: Sequence[str]) -> str:
    """The first output, in call order, none of whose submodules' outputs differ: where the difference
    arises. Outputs are listed when their module is called, so the root's comes first and always differs
    when anything inside it does."""
    paths = [module_path(name) for name in differing]
    for name, path in zip(differing, paths):
        if not any(_inside(other, path) for other in paths):
            return name
    return differing[0]


def module_path(output: str) -> str:
    """The module of an output name: `encoder.attn[0]` -> `encoder.attn`, `[logits]` -> `` (the root)."""
    return output.split("[", 1)[0]


def _inside(path: str, parent: str) -> bool:
    return path != parent and (parent == "" or path.startswith(parent + "."))


def forward_order(context: CompareContext, steps: Sequence[int]) -> list[str]:
    """Module outputs in the order the forward pass produced them: run A's order, with outputs only run B
    produced inserted after the output that preceded them in run B."""
    merged: list[str] = []
    for step in steps:
        names_a = _output_names(context.steps_a[step])
        names_b = _output_names(context.steps_b[step])
        for name in names_a:
            if name not in merged:
                merged.append(name)
        previous = None
        for name in names_b:
            if name not in merged:
                merged.insert(merged.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    return merged


def gradient_flow(measured: Measured, steps: Sequence[int]) -> dict[str, Any]:
    """Each shared parameter's gradient distance at the first step, the first step whose gradients differ and
    the last step: how far apart the gradients of A and B are along the network."""
    differing = [step for step in steps
                 if any(d is not None and d.differs for _, d in measured.items("gradients", step))]
    chosen = list(dict.fromkeys([steps[0], *(differing[:1]), steps[-1]]))
    names = [name_b for _, name_b in measured.context.parameters.pairs]
    if not names:  # no parameter both runs have (another model): nothing to place along the network
        return {"names": [], "panels": []}
    panels = []
    for step in chosen:
        by_name = dict(measured.items("gradients", step))
        distances = [by_name.get(name) for name in names]
        panels.append({"step": step, **_columns([_one(distance) for distance in distances])})
    return {"names": names, "panels": panels}


def _items(context: CompareContext, category: str, step: int,
           evidence: dict[tuple[str, int, str], dict[str, Any]]) -> Iterator[Item]:
    """(name, distance) of every item of a category both runs recorded at a step; the name is run B's."""
    record_a, record_b = context.steps_a[step], context.steps_b[step]
    if category == "loss_terms":
        terms_a, terms_b = record_a.get("loss_terms") or {}, record_b.get("loss_terms") or {}
        for name in terms_b:
            if name in terms_a:
                yield name, value_distance((terms_a[name] or {}).get("value"), (terms_b[name] or {}).get("value"))
        if "total_loss" in record_a and "total_loss" in record_b:
            yield "total_loss", value_distance(record_a["total_loss"], record_b["total_loss"])
    elif category == "data":
        tensors_a = (record_a.get("batch") or {}).get("tensors") or {}
        tensors_b = (record_b.get("batch") or {}).get("tensors") or {}
        for name in tensors_b:
            if name in tensors_a:
                yield name, tensor_distance(tensors_a[name], tensors_b[name],
                                            evidence.get(("data", step, f"batch.{name}")))
    elif category == "module_outputs":
        outputs_a = {(o.get("module"), o.get("call")): o for o in record_a.get("module_outputs") or []}
        for output in record_b.get("module_outputs") or []:
            key = (output.get("module"), output.get("call"))
            if key in outputs_a:
                name = f"{key[0]}#{key[1]}"
                yield name, tensor_distance(outputs_a[key].get("summary"), output.get("summary"),
                                            evidence.get(("module_outputs", step, name)))
    else:
        tensors_a, tensors_b = record_a.get(category) or {}, record_b.get(category) or {}
        for name_a, name_b in context.parameters.pairs:
            if name_a in tensors_a and name_b in tensors_b:
                yield name_b, tensor_distance(tensors_a[name_a], tensors_b[name_b],
                                              evidence.get((category, step, name_b)))


def _values_evidence(divergences: Iterable[Divergence]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """The comparators' element-wise statistics, by (category, step, name), where they compared values."""
    found = {}
    for root in divergences:
        for divergence in root.walk():
            if divergence.step is not None and divergence.evidence.get("compared_by") == "values":
                found[(divergence.category, divergence.step, divergence.name)] = divergence.evidence
    return found


def _aggregate(distances: Iterable[TensorDistance | None]) -> dict[str, Any]:
    """The largest distance of a step's items; `exact` only when every differing item's distance is."""
    measured = [distance for distance in distances if distance is not None]
    known = [distance for distance in measured if distance.max_abs is not None]
    differing = [distance for distance in measured if distance.differs]
    ulps = [distance.max_ulp for distance in differing if distance.max_ulp is not None]
    return {
        "max_abs": max((d.max_abs for d in known if d.max_abs is not None), default=None),
        "max_rel": max((d.max_rel for d in known if d.max_rel is not None), default=None),
        "max_ulp": max(ulps) if ulps else (0 if measured and not differing else None),
        "exact": all(distance.exact for distance in differing),
        "compared": len(measured),
        "differing": len(differing),
        "nonfinite": sum(1 for distance in measured if distance.nonfinite),
        "nan": sum(1 for distance in measured if distance.nan),
    }


def _one(distance: TensorDistance | None) -> dict[str, Any]:
    if distance is None:
        return {"max_abs": None, "max_rel": None, "max_ulp": None, "exact": None, "differs": None,
                "nan": None}
    return {"max_abs": distance.max_abs, "max_rel": distance.max_rel, "max_ulp": distance.max_ulp,
            "exact": distance.exact, "differs": distance.differs, "nan": distance.nan}


def _columns(entries: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """A list of per-step dicts as one list per key (the JSON stays small and easy to plot)."""
    keys = list(entries[0]) if entries else []
    return {key: [entry[key] for entry in entries] for key in keys}


def _empty_row(name: str, in_a: bool, in_b: bool, steps: int) -> dict[str, Any]:
    return {"name": name, "runs": "both" if in_a and in_b else ("a" if in_a else "b"),
            **{key: [None] * steps for key in ("max_abs", "max_rel", "max_ulp", "exact", "differs", "nan")}}


def _fill(row: dict[str, Any], index: int, entry: dict[str, Any]) -> None:
    if not entry["compared"]:
        return
    for key in ("max_abs", "max_rel", "max_ulp", "exact"):
        row[key][index] = entry[key]
    row["differs"][index] = entry["differing"] > 0
    row["nan"][index] = entry["nan"] > 0


def _output_names(record: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(str(output.get("module")) for output in record.get("module_outputs") or []))

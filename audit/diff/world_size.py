"""Two runs of another world size: the facts that tell reduction reordering from a change of data or model.

With the same global batch, DDP on N ranks computes the same mean gradient as one process, only summed in
another order (each rank's local mean, then the all-reduce). So where the union of the ranks' examples is
the same at every step and the runs start from the same parameters, the first thing that can differ is the
all-reduced gradient of step 1, and only by rounding. This module measures exactly that: the examples'
union per step, the initial parameters, step 1's global loss recombined in float64 from the ranks' losses,
and step 1's gradients element by element (from stored values) or by their exact extremes (from summaries).
The rule that words it is audit/explain/distributed.py:world_size_change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from repro_audit.audit.diff.array_stats import float_evidence
from repro_audit.audit.diff.tensor_distance import tensor_distance, value_distance
from repro_audit.audit.trace import Trace


def world_size_evidence(run_a: Sequence[Trace], run_b: Sequence[Trace]) -> dict[str, Any]:
    """What two runs of another world size share and where they first differ, as plain data."""
    return {
        "sizes": [len(run_a), len(run_b)],
        "data": _data(run_a, run_b),
        "initialisation_same": _initial_parameters(run_a[0]) == _initial_parameters(run_b[0]),
        "loss": _global_loss(run_a, run_b),
        "gradients": _gradients(run_a[0], run_b[0]),
    }


def _examples(run: Sequence[Trace], step: int) -> Counter[str] | None:
    """Every rank's examples at `step`, as one multiset; None where a rank did not fingerprint them."""
    union: Counter[str] = Counter()
    for trace in run:
        record = trace.step(step)
        examples = ((record or {}).get("batch") or {}).get("examples")
        if examples is None:
            return None
        union.update(examples)
    return union


def _data(run_a: Sequence[Trace], run_b: Sequence[Trace]) -> dict[str, Any]:
    steps = min(min(len(trace.steps) for trace in run) for run in (run_a, run_b))
    for step in range(1, steps + 1):
        a, b = _examples(run_a, step), _examples(run_b, step)
        if a is None or b is None:
            return {"union": "unknown", "steps": step - 1}
        if a != b:
            return {"union": "differs", "step": step, "steps": steps,
                    "only_a": sum((a - b).values()), "only_b": sum((b - a).values()),
                    "examples": [sum(a.values()), sum(b.values())]}
    first = _examples(run_a, 1) if steps else None
    return {"union": "same", "steps": steps, "examples": [sum(first.values()) if first else 0] * 2}


def _initial_parameters(trace: Trace) -> dict[str, Any]:
    """Each parameter's hash before training (the initialisation probe's record)."""
    tensors = (trace.initialisation or {}).get("tensors") or []
    return {entry.get("name"): (entry.get("summary") or {}).get("hash") for entry in tensors
            if entry.get("kind") == "parameter"}


def _global_loss(run_a: Sequence[Trace], run_b: Sequence[Trace]) -> dict[str, Any] | None:
    """Step 1's loss of the whole global batch, each run's ranks' losses averaged in float64 (every rank holds
    as many examples, and the loss is a mean): the same number up to rounding where only the order differs."""
    means: list[float] = []
    for run in run_a, run_b:
        losses = [(trace.step(1) or {}).get("total_loss") for trace in run]
        numbers = [float(loss) for loss in losses if isinstance(loss, (int, float))]
        if len(numbers) != len(losses):
            return None
        means.append(sum(numbers) / len(numbers))
    distance = value_distance(means[0], means[1])
    return None if distance is None else {"a": means[0], "b": means[1], "max_rel": distance.max_rel}


def _gradients(trace_a: Trace, trace_b: Trace) -> dict[str, Any]:
    """Step 1's gradients, A's rank 0 against B's rank 0 (after the all-reduce every rank holds the same):
    element by element where both runs stored values, else bounded below by the summaries' exact extremes."""
    step_a, step_b = trace_a.step(1) or {}, trace_b.step(1) or {}
    grads_a, grads_b = step_a.get("gradients") or {}, step_b.get("gradients") or {}
    values_a, values_b = trace_a.values(1), trace_b.values(1)
    names = [name for name in grads_a if name in grads_b]
    rows: dict[str, Any] = {}
    exact = True
    for name in names:
        key = f"gradients/{name}"
        a = values_a.get(key) if values_a is not None else None
        b = values_b.get(key) if values_b is not None else None
        if a is not None and b is not None and a.shape == b.shape:
            found = float_evidence(a, b, rtol=0.0, atol=0.0)
            scale = float(max(abs(a).max(initial=0.0), abs(b).max(initial=0.0)))
            rows[name] = {"max_ulp": found["max_ulp"], "max_abs": found["max_abs_error"],
                          "max_rel": found["max_abs_error"] / scale if scale else 0.0,
                          "differing": found["mismatched"], "of": int(a.size)}
            continue
        exact = False
        distance = tensor_distance(grads_a[name], grads_b[name])
        if distance is not None:
            rows[name] = {"max_ulp": distance.max_ulp, "max_abs": distance.max_abs, "max_rel": distance.max_rel,
                          "differing": None, "of": grads_a[name].get("numel")}
    worst = max(rows.values(), key=lambda row: row["max_rel"] or 0.0, default=None)
    return {"exact": exact and bool(rows), "compared": len(rows), "parameters": rows,
            "max_ulp": max((row["max_ulp"] or 0 for row in rows.values()), default=None),
            "max_rel": worst["max_rel"] if worst else None,
            "identical": all(row["max_abs"] == 0 for row in rows.values())}

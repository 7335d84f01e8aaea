"""RETURNN's learning-rate control in another state: other per-epoch scores or learning rates, another score
to decide by, or another control. The seed's thread asked exactly this ("it has a smart logic to determine
the score to look at: if it looks at one of your custom losses, the behaviour differs")."""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence
from repro_audit.audit.explain.finding import Claims, Finding

LR_CONTROL_KEYS = ("lr_control", "lr_control_error_key", "lr_control_epochs")  # probes/returnn/lr_control.py
SHOWN = 3


def lr_control_change(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    changed = sorted((d for d in claims.free(divergences) if d.category == "optimizer"
                      and d.evidence.get("param_group") == "update" and d.evidence.get("hyperparameter") in LR_CONTROL_KEYS),
                     key=lambda d: d.sort_key())
    if not changed:
        return []
    step = changed[0].step
    first_step = [d for d in changed if d.step == step]
    first = min(first_step, key=lambda d: LR_CONTROL_KEYS.index(d.evidence["hyperparameter"]))
    facts = [_fact(d.evidence["hyperparameter"], d.evidence.get("a"), d.evidence.get("b"))
             for d in sorted(first_step, key=lambda d: LR_CONTROL_KEYS.index(d.evidence["hyperparameter"]))]
    rates_differ = any(d.category == "optimizer" and d.evidence.get("hyperparameter") in ("learning_rate", "lr")
                       for d in divergences)
    effect = ("the learning rates it set differ as well" if rates_differ else
              "the learning rates it set are the same so far, yet it sets later epochs' rates from this state")
    first.cause = "lr_control_change"
    first.explanation = (f"RETURNN's learning-rate control holds other state from step {step}: "
                         f"{'; '.join(facts)}. It sets each epoch's learning rate from earlier epochs' scores: "
                         f"{effect}.")
    first.evidence.update(steps=sorted({d.step for d in changed if d.step is not None}), changes_shared=rates_differ)
    return [Finding(first, [d for d in changed if d is not first])]


def _fact(key: str, a: Any, b: Any) -> str:
    if key == "lr_control":
        return f"the control is {a} in run A and {b} in run B"
    if key == "lr_control_error_key":
        return f"it decides by the score {_key(a)} in run A and {_key(b)} in run B"
    differences = _epoch_differences(a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {})
    more = f" and {len(differences) - SHOWN} more" if len(differences) > SHOWN else ""
    return "; ".join(differences[:SHOWN]) + more


def _epoch_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Per epoch: its learning rate and each score, where the runs differ."""
    found = []
    for epoch in sorted(set(a) | set(b), key=int):
        data_a, data_b = a.get(epoch) or {}, b.get(epoch) or {}
        if data_a.get("learning_rate") != data_b.get("learning_rate"):
            found.append(f"epoch {epoch}'s learning rate is {_value(data_a.get('learning_rate'))} in run A and "
                         f"{_value(data_b.get('learning_rate'))} in run B")
        scores_a, scores_b = data_a.get("scores") or {}, data_b.get("scores") or {}
        for name in sorted(set(scores_a) | set(scores_b)):
            if scores_a.get(name) != scores_b.get(name):
                found.append(f"epoch {epoch}'s score {name} is {_value(scores_a.get(name))} in run A and "
                             f"{_value(scores_b.get(name))} in run B")
    return found


def _key(value: Any) -> str:
    return "none (no scores yet)" if value is None else str(value)


def _value(value: Any) -> str:
    if value is None:
        return "absent"
    return f"{value:.6g}" if isinstance(value, float) else str(value)

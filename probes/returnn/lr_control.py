"""RETURNN's learning-rate control as the step's update facts: which control, the score key it decides by,
and its per-epoch learning rates and scores.

RETURNN's control (NewbobMultiEpoch, ...) sets each epoch's learning rate from the scores of earlier epochs,
and picks the score it looks at by its own rule when `learning_rate_control_error_measure` is not set: a
zero-scaled loss can become that score. Recorded with every step, compared like any update setting.
"""

from __future__ import annotations

from typing import Any


def lr_control_state(engine: Any) -> dict[str, Any]:
    """`lr_control` (the control and its options), `lr_control_error_key` (the score it would decide the
    next epoch's rate by) and `lr_control_epochs` ({epoch: {learning_rate, scores}} up to this epoch)."""
    control = getattr(engine, "learning_rate_control", None)
    if control is None:
        return {}
    epoch = int(engine.epoch)
    epochs = {str(e): {"learning_rate": float(data.learning_rate) if data.learning_rate is not None else None,
                       "scores": {key: _score(value) for key, value in sorted((data.error or {}).items())}}
              for e, data in sorted(control.epoch_data.items()) if e <= epoch}
    last = max((e for e in control.epoch_data if e < epoch), default=None)
    return {"lr_control": _setting(control),
            "lr_control_error_key": control.get_error_key(last) if last is not None else None,
            "lr_control_epochs": epochs}


def _setting(control: Any) -> str:
    options = {key: value for key, value in sorted(vars(control).items())
               if key not in ("epoch_data", "filename") and isinstance(value, (int, float, str, bool, type(None)))}
    return f"{type(control).__name__}({', '.join(f'{key}={value!r}' for key, value in options.items())})"


def _score(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: float(item) for key, item in sorted(value.items())}
    return float(value)

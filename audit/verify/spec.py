"""What a verification run neutralises: the `interventions` mapping of its config, checked like any config.

`--verify` writes it; the probes read it (probes/torch/interventions.py, probes/tf/interventions.py). It is
part of the config stored in the trace, so a verification trace says what was done to it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from repro_audit.audit.errors import ConfigError

# key -> (what it does, the type it must have)
INTERVENTION_KEYS: dict[str, str] = {
    "reference_trace": "the trace of run A that values and generator states are taken from",
    "initial_values": "after build, shared parameters and buffers take run A's initial values (matched by name)",
    "rng_after_build": "after build, the random generators take the state they had in run A after build",
    "private_rng_modules": "these modules draw from a private generator, so they move no shared random stream",
    "drop_terms": "these loss terms are left out of the total (not multiplied by their weight)",
    "hyperparameters": "{step: {param group: {key: value}}}: run A's optimizer settings at those steps",
    "batches": "every step trains on run A's batch (its kept values), in run B's batch structure",
}


def validate_interventions(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The checked mapping; a wrong key or type is one ConfigError line naming it."""
    unknown = sorted(set(raw) - set(INTERVENTION_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown intervention {unknown[0]!r} (known: {', '.join(INTERVENTION_KEYS)})")
    checked = dict(raw)
    for key in ("initial_values", "rng_after_build", "batches"):
        if key in checked and not isinstance(checked[key], bool):
            raise ConfigError(f"{where}: interventions.{key} must be true or false")
    if any(checked.get(key) for key in ("initial_values", "rng_after_build", "batches")) and \
            not isinstance(checked.get("reference_trace"), str):
        raise ConfigError(f"{where}: interventions.initial_values, rng_after_build and batches need a "
                          f"reference_trace")
    for key in ("private_rng_modules", "drop_terms"):
        value = checked.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: interventions.{key} must be a list of names")
    settings = checked.get("hyperparameters", {})
    if not isinstance(settings, dict) or not all(
            str(step).isdigit() and isinstance(groups, dict) and all(
                str(group).isdigit() and isinstance(values, dict) and all(
                    isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    for value in values.values())
                for group, values in groups.items())
            for step, groups in settings.items()):
        raise ConfigError(f"{where}: interventions.hyperparameters must map step -> param group -> "
                          f"{{key: finite number}}")
    return checked

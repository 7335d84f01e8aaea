"""Load a run config (YAML or TOML), apply `--set key.path=value` overrides, validate it.

Unknown keys are errors, not warnings: a misspelt capture option that silently does nothing is exactly
the kind of surprise this tool exists to remove.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from audit.errors import ConfigError

FRAMEWORKS = ("torch", "tensorflow")
VALUE_MODES = ("none", "first", "all")
TOP_LEVEL_KEYS = {"recipe", "framework", "seed", "steps", "params", "loss_weights", "capture", "timeout", "label"}
CAPTURE_DEFAULTS: dict[str, Any] = {
    "values": "none",  # keep tensor values: none, first (step 1), all
    "graph": True,  # op-level graph of step 1 and of steps whose op sequence changes
    "module_outputs": True,  # hash and statistics of every module output
    "random_draws": True,  # ledger of random ops
    "nan_provenance": True,  # find the backward node where NaN/Inf entered the gradients
    "term_attribution": True,  # per-term gradients at step 1 and where gradients turn non-finite
    "health": True,  # training-health statistics
}
DEFAULT_TIMEOUT_S = 600.0


@dataclass
class RunConfig:
    """A validated config: what the runner and the probes need, nothing else."""

    recipe: str
    framework: str = "torch"
    seed: int = 0
    steps: int = 3
    params: dict[str, Any] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=lambda: dict(CAPTURE_DEFAULTS))
    timeout: float = DEFAULT_TIMEOUT_S
    label: str = "run"
    config_dir: str | None = None
    source: str | None = None

    def weight_for(self, term: str) -> float:
        return term_weight(self.loss_weights, term)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data: stored in the trace and compared by the differ."""
        return {
            "recipe": self.recipe,
            "framework": self.framework,
            "seed": self.seed,
            "steps": self.steps,
            "params": copy.deepcopy(self.params),
            "loss_weights": dict(self.loss_weights),
            "capture": dict(self.capture),
            "timeout": self.timeout,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, config_dir: str | None = None,
                  source: str | None = None) -> RunConfig:
        return validate(dict(data), config_dir=config_dir, source=source, default_label=str(data.get("label", "run")))


def term_weight(weights: Mapping[str, float], term: str) -> float:
    """Weight of a loss term: exact name first, then the first matching glob pattern, else 1.0."""
    if term in weights:
        return float(weights[term])
    for pattern, weight in weights.items():
        if fnmatch.fnmatchcase(term, pattern):
            return float(weight)
    return 1.0


def load_config(path: str | Path, *, overrides: Sequence[str] = (), steps: int | None = None,
                values: str | None = None) -> RunConfig:
    """Read a config file and apply command-line overrides; every problem is one ConfigError line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a folder, not a file: {path}")
    raw = _parse(path)
    for override in overrides:
        apply_override(raw, override)
    if steps is not None:
        raw["steps"] = steps
    if values is not None:
        raw.setdefault("capture", {})
        if not isinstance(raw["capture"], dict):
            raise ConfigError(f"{path}: 'capture' must be a mapping")
        raw["capture"]["values"] = values
    return validate(raw, config_dir=str(path.resolve().parent), source=str(path), default_label=path.stem)


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config {path} must end in .yaml, .yml or .toml")
    except ConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"malformed config {path}: {first_line}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one Hydra-style `a.b.c=value`; the value is parsed as YAML (so 0.0, true, [1, 2] work)."""
    if "=" not in override:
        raise ConfigError(f"override must be key.path=value, got {override!r}")
    key_path, _, text = override.partition("=")
    keys = [key for key in key_path.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override has an empty key: {override!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a mapping")
        node = child
    node[keys[-1]] = value


def validate(raw: dict[str, Any], *, config_dir: str | None, source: str | None, default_label: str) -> RunConfig:
    where = source or "config"
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    if "recipe" not in raw:
        raise ConfigError(f"{where}: missing required key 'recipe' (module:function)")
    recipe = raw["recipe"]
    if not isinstance(recipe, str) or recipe.count(":") != 1 or not all(recipe.split(":")):
        raise ConfigError(f"{where}: recipe must be 'module:function', got {recipe!r}")
    framework = raw.get("framework", "torch")
    if framework not in FRAMEWORKS:
        raise ConfigError(f"{where}: framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    seed = _int(raw.get("seed", 0), "seed", where, minimum=0)
    steps = _int(raw.get("steps", 3), "steps", where, minimum=1)
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: 'params' must be a mapping")
    weights = raw.get("loss_weights") or {}
    if not isinstance(weights, dict):
        raise ConfigError(f"{where}: 'loss_weights' must be a mapping of term name to weight")
    for term, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{where}: loss weight of {term!r} must be a number, got {weight!r}")
    capture = _capture(raw.get("capture") or {}, where)
    timeout = raw.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}: timeout must be a positive number of seconds, got {timeout!r}")
    label = raw.get("label", default_label)
    return RunConfig(
        recipe=recipe, framework=framework, seed=seed, steps=steps, params=params,
        loss_weights={str(k): float(v) for k, v in weights.items()}, capture=capture,
        timeout=float(timeout), label=str(label), config_dir=config_dir, source=source,
    )


def _capture(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'capture' must be a mapping")
    unknown = sorted(set(raw) - set(CAPTURE_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown capture option {unknown[0]!r} (known: {', '.join(sorted(CAPTURE_DEFAULTS))})"
        )
    capture = dict(CAPTURE_DEFAULTS)
    capture.update(raw)
    if capture["values"] not in VALUE_MODES:
        raise ConfigError(f"{where}: capture.values must be one of {', '.join(VALUE_MODES)}")
    for key, default in CAPTURE_DEFAULTS.items():
        if isinstance(default, bool) and not isinstance(capture[key], bool):
            raise ConfigError(f"{where}: capture.{key} must be true or false, got {capture[key]!r}")
    return capture


def _int(value: Any, key: str, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value

"""Load a run config (YAML or TOML), apply `--set key.path=value` overrides, validate it.

Unknown keys are errors, not warnings: a misspelt capture option that silently does nothing is exactly
the kind of surprise this tool exists to remove.
"""

from __future__ import annotations

import copy
import datetime
import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repro_audit.audit.config_files import first_line, load_yaml, read_config_file
from repro_audit.audit.errors import ConfigError

FRAMEWORKS = ("torch", "tensorflow", "returnn")
VALUE_MODES = ("none", "first", "all")
TOP_LEVEL_KEYS = {"recipe", "framework", "seed", "steps", "params", "loss_weights", "capture", "timeout", "label",
                  "interventions", "data_order_seed", "launch", "returnn_config"}
LAUNCH_KEYS = ("nproc", "wrap")
WRAPS = ("ddp", "fsdp")  # what the runner wraps the recipe's model in
MAX_NPROC = 64  # ranks on one machine: more is a typo, not a run
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
MAX_SEED = 2**32 - 1  # numpy's and torch's generators refuse larger seeds
MAX_DEPTH = 32  # nesting of params: a config, not a data set
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
RECIPE_SPEC = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}")


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
    # Set by `--verify` only (audit/verify): what to neutralise in this run; empty for every ordinary run.
    interventions: dict[str, Any] = field(default_factory=dict)
    # Passed to the recipe as `build(params, data_order_seed=...)` when set (`noise --vary data`): the order
    # the recipe serves its data in, kept apart from `seed`, which drives initialisation and dropout.
    data_order_seed: int | None = None
    # `launch: {nproc: N}`: run under torchrun with N ranks (audit/launch.py); empty for a single process.
    launch: dict[str, Any] = field(default_factory=dict)
    config_dir: str | None = None
    source: str | None = None
    # The interpreter the run's worker starts with (`--python-b`): another environment, same config. Not part
    # of the config: the environment fingerprint records what it changed.
    python: str | None = None
    # framework: returnn: the RETURNN config file (relative to the config's folder) whose engine runs; params
    # then override its values (docs/returnn.md).
    returnn_config: str | None = None

    @property
    def nproc(self) -> int:
        """How many ranks the run starts; 0 for one plain process (no launcher, no process group)."""
        return int(self.launch.get("nproc", 0))

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
            # Written only when set, so ordinary traces and their config comparison read as before.
            **({"interventions": copy.deepcopy(self.interventions)} if self.interventions else {}),
            **({"data_order_seed": self.data_order_seed} if self.data_order_seed is not None else {}),
            **({"launch": dict(self.launch)} if self.launch else {}),
            **({"returnn_config": self.returnn_config} if self.returnn_config else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, config_dir: str | None = None,
                  source: str | None = None) -> RunConfig:
        return validate(dict(data), config_dir=config_dir, source=source, default_label=str(data.get("label", "run")))


def refuse_launch(config: RunConfig, *, what: str) -> RunConfig:
    """Commands that read one trace per run do not take runs of several ranks yet: said, not a crash later."""
    if config.nproc:
        raise ConfigError(f"{config.source or 'config'}: {what} does not take runs of several ranks (launch/"
                          f"--nproc) yet; record, check, diff and compare do")
    return config


def term_weight(weights: Mapping[str, float], term: str) -> float:
    """Weight of a loss term: exact name first, then the first matching glob pattern, else 1.0."""
    if term in weights:
        return float(weights[term])
    for pattern, weight in weights.items():
        if fnmatch.fnmatchcase(term, pattern):
            return float(weight)
    return 1.0


def load_config(path: str | Path, *, overrides: Sequence[str] = (), steps: int | None = None,
                values: str | None = None, nproc: int | None = None) -> RunConfig:
    """Read a config file and apply command-line overrides; every problem is one ConfigError line."""
    if str(path) == "":
        raise ConfigError("config path is empty")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a folder, not a file: {path}")
    raw = read_config_file(path)
    for override in overrides:
        apply_override(raw, override)
    if steps is not None:
        raw["steps"] = steps
    if values is not None:
        raw.setdefault("capture", {})
        if not isinstance(raw["capture"], dict):
            raise ConfigError(f"{path}: 'capture' must be a mapping")
        raw["capture"]["values"] = values
    if nproc is not None:  # `--nproc N`; a launch that is not a mapping is refused by validate
        launch = raw.get("launch") or {}
        raw["launch"] = {**launch, "nproc": nproc} if isinstance(launch, dict) else launch
    return validate(raw, config_dir=str(path.resolve().parent), source=str(path), default_label=path.stem)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one Hydra-style `a.b.c=value`; the value is parsed as YAML (so 0.0, true, [1, 2] work)."""
    if "=" not in override:
        raise ConfigError(f"override must be key.path=value, got {override!r}")
    key_path, _, text = override.partition("=")
    keys = [key for key in key_path.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override has an empty key: {override!r}")
    try:
        value = load_yaml(text) if text.strip() else ""
    except (ConfigError, yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({first_line(exc)})") from exc
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
    _check_plain(raw, where, "", depth=0)
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    framework = raw.get("framework", "torch")
    if not isinstance(framework, str) or framework not in FRAMEWORKS:
        raise ConfigError(f"{where}: framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    returnn_config = _returnn_config(raw, framework, where)
    if returnn_config is not None:
        raw.setdefault("recipe", "returnn:engine")  # RETURNN's own engine runs: there is no recipe of ours
    if "recipe" not in raw:
        raise ConfigError(f"{where}: missing required key 'recipe' (module:function)")
    recipe = raw["recipe"]
    if not isinstance(recipe, str) or not RECIPE_SPEC.fullmatch(recipe):
        raise ConfigError(f"{where}: recipe must be 'module:function' (Python names, the module may be "
                          f"dotted), got {recipe!r}")
    seed = _int(raw.get("seed", 0), "seed", where, minimum=0, maximum=MAX_SEED)
    steps = _int(raw.get("steps", 3), "steps", where, minimum=1)
    params = _mapping(raw, "params", where)
    weights = _mapping(raw, "loss_weights", where, what="a mapping of term name to weight")
    for term, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{where}: loss weight of {term!r} must be a number, got {weight!r}")
        if not math.isfinite(weight):
            raise ConfigError(f"{where}: loss weight of {term!r} must be a number and finite, got {weight!r}")
    capture = _capture(_mapping(raw, "capture", where), where)
    timeout = raw.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ConfigError(f"{where}: timeout must be a finite positive number of seconds, got {timeout!r}")
    label = raw.get("label", default_label)
    if not isinstance(label, str) or not label.strip() or not label.isprintable():
        raise ConfigError(f"{where}: label must be a non-empty string on one line, got {label!r}")
    from repro_audit.audit.verify.spec import validate_interventions

    interventions = validate_interventions(_mapping(raw, "interventions", where), where)
    data_order_seed = raw.get("data_order_seed")
    if data_order_seed is not None:
        data_order_seed = _int(data_order_seed, "data_order_seed", where, minimum=0, maximum=MAX_SEED)
    launch = _launch(_mapping(raw, "launch", where, what="a mapping like {nproc: 2}"), where, framework)
    return RunConfig(
        recipe=recipe, framework=framework, seed=seed, steps=steps, params=params,
        loss_weights={str(k): float(v) for k, v in weights.items()}, capture=capture,
        timeout=float(timeout), label=label, interventions=interventions, data_order_seed=data_order_seed,
        launch=launch, returnn_config=returnn_config,
        config_dir=config_dir, source=source,
    )


def _launch(raw: dict[str, Any], where: str, framework: str) -> dict[str, Any]:
    """`launch: {nproc: N}`: N ranks under torchrun, one trace each (torch only)."""
    if not raw:
        return {}
    unknown = sorted(set(raw) - set(LAUNCH_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown launch option {unknown[0]!r} (known: {', '.join(LAUNCH_KEYS)})")
    if "nproc" not in raw:
        raise ConfigError(f"{where}: launch needs 'nproc', the number of ranks (e.g. launch: {{nproc: 2}})")
    nproc = _int(raw["nproc"], "launch.nproc", where, minimum=1, maximum=MAX_NPROC)
    if framework != "torch":
        raise ConfigError(f"{where}: launch (torchrun) is for framework torch, not {framework}")
    wrap = raw.get("wrap", "ddp")
    if wrap not in WRAPS:
        raise ConfigError(f"{where}: launch.wrap must be one of {', '.join(WRAPS)}, got {wrap!r}")
    return {"nproc": nproc, **({"wrap": wrap} if wrap != "ddp" else {})}


def _returnn_config(raw: Mapping[str, Any], framework: str, where: str) -> str | None:
    """`framework: returnn` names the RETURNN config file to run; no other framework takes one."""
    value = raw.get("returnn_config")
    if framework != "returnn":
        if value is not None:
            raise ConfigError(f"{where}: returnn_config is only for framework: returnn")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: framework: returnn needs returnn_config: the RETURNN config file to run")
    return value


def _mapping(raw: Mapping[str, Any], key: str, where: str, *, what: str = "a mapping") -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key!r} must be {what}, got {type(value).__name__}")
    return value


def _check_plain(value: Any, where: str, name: str, *, depth: int) -> None:
    """A config is plain data (what JSON holds, with string keys): it goes to the worker as JSON and into
    the trace, and two configs compare key by key. Dates, bytes (!!binary), sets (!!set), pairs and keys
    that are not strings (`1:` and `"1":` would become one key) are refused by name."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: {name or 'the config'} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: key {key!r} {_in(name)}is {_kind(key)}, not a string (quote it)")
            _check_plain(item, where, f"{name}.{key}" if name else key, depth=depth + 1)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(item, where, f"{name}[{index}]", depth=depth + 1)
        return
    hint = " (quote a date to keep it as text)" if isinstance(value, (datetime.date, datetime.time)) else ""
    raise ConfigError(f"{where}: {name or 'the config'} is {_kind(value)}; a config holds strings, numbers, "
                      f"booleans, lists and mappings{hint}")


def _in(name: str) -> str:
    return f"in {name} " if name else ""


def _kind(value: Any) -> str:
    if isinstance(value, (datetime.date, datetime.time)):
        return f"a date or time ({value})"
    if isinstance(value, (bytes, bytearray)):
        return "a byte string (!!binary)"
    if isinstance(value, (set, frozenset)):
        return "a set (!!set)"
    if isinstance(value, tuple):
        return "a pair (!!pairs or !!omap)"
    return f"of type {type(value).__name__}"


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


def _int(value: Any, key: str, where: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}" + \
            (" (2**32 - 1)" if maximum == MAX_SEED else "")
        raise ConfigError(f"{where}: {key} must be an integer {bound}, got {value!r}")
    return value

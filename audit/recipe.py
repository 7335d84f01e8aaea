"""The recipe protocol: the user's code builds the run, repro-audit owns the loop.

A recipe is a function `build(params) -> Recipe` named in the config as `module:function`. The runner
seeds every generator with the config's `seed` before calling it, so the recipe should not seed itself.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from repro_audit.audit.errors import ConfigError, RunFailed


@dataclass
class Recipe:
    """What a recipe returns.

    `loss(model, batch)` returns a mapping of named loss terms (scalars); it may also take `step` as a
    keyword argument. The runner forms the total as the sum of weight x term, with weights from the
    config's `loss_weights`, so it can attribute gradients to each term, zero-weighted ones included.
    `batches` is any iterable; the runner takes `micro_batches` batches per step (default 1), runs forward
    and backward on each with the total scaled by 1/micro_batches, then, before the optimizer step, what a
    real loop does there (torch): `grad_scaler` (a torch.amp.GradScaler: the loss is scaled for backward,
    the gradients unscaled before clipping, the step taken through the scaler), `clip_grad_value`,
    `clip_grad_norm` (over the parameters that have gradients), then `before_optimizer_step(model=,
    optimizer=, step=)`, which may change the gradients and may return a mapping of facts (numbers,
    strings) to record. Each is recorded in the step and compared like a hyper-parameter.
    """

    model: Any
    optimizer: Any
    batches: Iterable[Any]
    loss: Callable[..., Mapping[str, Any]]
    lr_scheduler: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    micro_batches: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    grad_scaler: Any = None
    before_optimizer_step: Callable[..., Mapping[str, Any] | None] | None = None


REQUIRED_FIELDS = ("model", "optimizer", "batches", "loss")
OPTIONAL_FIELDS = ("lr_scheduler", "micro_batches", "clip_grad_norm", "clip_grad_value", "grad_scaler",
                   "before_optimizer_step")


def resolve_recipe(spec: str, *, config_dir: Path | None) -> Callable[..., Any]:
    """Import `module:function`, looking in the config file's folder first, then the working directory."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"recipe must be 'module:function', got {spec!r}")
    module_name, function_name = spec.split(":")
    search = [str(config_dir)] if config_dir else []
    search.append(str(Path.cwd()))
    for folder in reversed(search):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import recipe module {module_name!r} (looked in {', '.join(search)})"
            ) from exc
        raise ConfigError(f"recipe module {module_name!r} failed to import: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"recipe module {module_name!r} failed to import: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, function_name, None)
    if function is None or not callable(function):
        raise ConfigError(f"recipe module {module_name!r} has no function {function_name!r}")
    return function


def call_recipe(build: Callable[..., Any], params: Mapping[str, Any], *, spec: str,
                data_order_seed: int | None) -> Any:
    """`build(params)`, and `data_order_seed=` when the config sets one: the hook `noise --vary data` uses to
    change the order of the data without changing `seed` (initialisation, dropout). A recipe that cannot take
    it is told so, rather than silently serving every seed the same data."""
    if data_order_seed is None:
        return build(dict(params))
    try:
        parameters = inspect.signature(build).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    takes = "data_order_seed" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                                    for p in parameters.values())
    if not takes:
        raise ConfigError(f"recipe {spec} does not take data_order_seed: to vary the data order, give it a keyword "
                          f"argument `data_order_seed=None` that orders its batches (docs/noise.md)")
    return build(dict(params), data_order_seed=data_order_seed)


def as_recipe(returned: Any, *, spec: str) -> Recipe:
    """Accept a Recipe or a mapping with the same keys; anything else is the user's error, said plainly."""
    if isinstance(returned, Recipe):
        recipe = returned
    elif isinstance(returned, Mapping):
        missing = [key for key in REQUIRED_FIELDS if key not in returned]
        if missing:
            raise RunFailed(f"recipe {spec} returned a mapping without {', '.join(missing)}")
        known = set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)
        extras = {key: value for key, value in returned.items() if key not in known}
        recipe = Recipe(**{key: value for key, value in returned.items() if key in known}, extras=extras)
    else:
        raise RunFailed(
            f"recipe {spec} returned {type(returned).__name__}; expected repro_audit.Recipe or a mapping with "
            f"keys {', '.join(REQUIRED_FIELDS)}"
        )
    if not callable(recipe.loss):
        raise RunFailed(f"recipe {spec}: 'loss' is not callable")
    if not hasattr(recipe.batches, "__iter__") and not hasattr(recipe.batches, "__next__"):
        raise RunFailed(f"recipe {spec}: 'batches' is not iterable")
    _check_update_fields(recipe, spec)
    return recipe


def _check_update_fields(recipe: Recipe, spec: str) -> None:
    micro = recipe.micro_batches
    if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1:
        raise RunFailed(f"recipe {spec}: 'micro_batches' must be an integer >= 1, got {micro!r}")
    for name in ("clip_grad_norm", "clip_grad_value"):
        value = getattr(recipe, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise RunFailed(f"recipe {spec}: '{name}' must be a positive number, got {value!r}")
    hook = recipe.before_optimizer_step
    if hook is not None and not callable(hook):
        raise RunFailed(f"recipe {spec}: 'before_optimizer_step' is not callable")


def loss_takes_step(loss: Callable[..., Any]) -> bool:
    try:
        return "step" in inspect.signature(loss).parameters
    except (TypeError, ValueError):
        return False


def step_batches(batches: Any, *, steps: int, spec: str, per_step: int = 1) -> Iterator[Any]:
    """The recipe's batches for `steps` steps, `per_step` at a time (a list of them where more than one);
    running out early is the recipe's error, not a crash."""
    iterator = iter(batches)
    for step in range(1, steps + 1):
        try:
            taken = [next(iterator) for _ in range(per_step)]
        except StopIteration:
            raise RunFailed(f"recipe {spec}: batches ran out after {step - 1} steps "
                            f"(config asks for {steps})") from None
        yield taken[0] if per_step == 1 else taken

"""Assert that training runs are identical: the library API behind the pytest plugin, usable without pytest.

Each assertion records its runs through `audit.runner` (one fresh process per run, two at a time), compares
the traces and, on a divergence, raises `RunsDiverged` whose message is the compact text rendering of the
comparison: a summary to read in a test log, not a dump. A run that could not be recorded (crash, timeout,
bad config) is not a divergence: it raises the project's user-facing `RunFailed` or `ConfigError`.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from audit.config import RunConfig, apply_override, load_config, refuse_launch
from audit.divergence import CATEGORIES, Comparison
from audit.errors import ConfigError, RunFailed
from audit.runner import RunResult, record_all
from audit.trace import Trace

ConfigSource = Union[str, "os.PathLike[str]", RunConfig, Mapping[str, Any]]
RecipeSource = Union[str, Callable[..., Any]]  # noqa: UP007

MAX_ITEMS = 5  # divergences shown in a failure message; the HTML report has them all
TRACEBACK_LINES = 6  # last lines of a crashed recipe's traceback quoted in the error


class RunsDiverged(AssertionError):
    """Runs that should be identical are not; the message is a few lines naming the cause
    (reports/pytest_message.py)."""

    def __init__(self, message: str, *, comparison: Comparison, comparisons: Sequence[Comparison] = (),
                 report_path: Path | None = None, trace_dir: Path | None = None) -> None:
        super().__init__(message)
        self.comparison = comparison
        self.comparisons = list(comparisons) or [comparison]
        self.report_path = report_path
        self.trace_dir = trace_dir


@dataclass
class Auditor:
    """Records and compares runs for assertions; the pytest fixture is one of these per test.

    `workdir`: where traces go; failing assertions keep theirs there, passing ones remove theirs. Without
    it each assertion uses a temporary folder removed afterwards. `report_dir`: write the HTML report of
    every failing comparison there, named after `report_name`. `base_dir`: what relative config paths are
    relative to (the working directory when None).
    """

    workdir: Path | None = None
    report_dir: Path | None = None
    report_name: str = "repro-audit"
    base_dir: Path | None = None
    parallel: bool | None = None
    verbose: int = 0  # pytest's -v count: a longer failure message, still a few lines
    reports: list[Path] = field(default_factory=list)
    _assertions: int = field(default=0, init=False, repr=False)

    def __repr__(self) -> str:  # pytest shows the fixture's value beside a failing test: keep it one word
        return f"<repro-audit Auditor {self.report_name}>"

    def assert_deterministic(self, config: ConfigSource, *, runs: int = 2, steps: int | None = None,
                             overrides: Sequence[str] = (), rtol: float = 0.0, atol: float = 0.0,
                             ignore: Sequence[str] = ()) -> list[Comparison]:
        """Run one config `runs` times; every run must match run 1 (bitwise unless rtol/atol say otherwise)."""
        __tracebackhide__ = True
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
            raise ValueError(f"runs must be an integer >= 2, got {runs!r}")
        ignore = _categories(ignore)
        base = self._resolve(config, overrides=overrides, steps=steps)
        configs = []
        for index in range(1, runs + 1):
            run = copy.deepcopy(base)
            run.label = f"{base.label} run {index}"
            configs.append(run)
        with self._folder() as folder:
            traces = self._record(configs, folder)
            comparisons = _compare_runs(traces, rtol=rtol, atol=atol, ignore=ignore)
            diverged = [comparison for comparison in comparisons if not comparison.identical]
            if diverged:
                others = ", ".join(f"run {comparisons.index(c) + 2}" for c in diverged)
                headline = (f"{base.label!r} is not deterministic{_tolerance_words(rtol, atol)}: "
                            f"{others} of {runs} differ from run 1")
                self._fail(headline, diverged[0], folder, traces[0], traces[comparisons.index(diverged[0]) + 1],
                           check=comparisons)
        return comparisons

    def assert_identical(self, config_a: ConfigSource, config_b: ConfigSource | None = None, *,
                         overrides_a: Sequence[str] = (), overrides_b: Sequence[str] = (),
                         steps: int | None = None, rtol: float = 0.0, atol: float = 0.0,
                         ignore: Sequence[str] = ()) -> Comparison:
        """Run two configs (or config A against itself with `overrides_b`) and require the same training."""
        __tracebackhide__ = True
        if config_b is None and not overrides_b:
            raise ValueError("give config_b, or overrides_b to compare config_a against itself with a change")
        ignore = _categories(ignore)
        first = self._resolve(config_a, overrides=overrides_a, steps=steps)
        second = self._resolve(config_a if config_b is None else config_b, overrides=overrides_b, steps=steps)
        return self._assert_pair(first, second, rtol=rtol, atol=atol, ignore=ignore)

    def assert_recipes_identical(self, recipe_a: RecipeSource, recipe_b: RecipeSource, *,
                                 params: Mapping[str, Any] | None = None, seed: int = 0, steps: int = 3,
                                 framework: str | None = None, loss_weights: Mapping[str, float] | None = None,
                                 capture: Mapping[str, Any] | None = None, timeout: float | None = None,
                                 rtol: float = 0.0, atol: float = 0.0, ignore: Sequence[str] = ()) -> Comparison:
        """Train two recipes (callables or 'module:function') with the same settings; no config file needed.

        The `config` category is always left out: both configs are built from the same arguments here, so
        the recipe's name is their only difference, and that difference is the point of the assertion.
        `framework` defaults to the one the recipes' modules import (a Keras recipe needs no argument).
        """
        __tracebackhide__ = True
        ignore = tuple(dict.fromkeys(_categories(ignore) + ("config",)))
        framework = framework or recipe_framework((recipe_a, recipe_b))
        configs = []
        for recipe in (recipe_a, recipe_b):
            spec, import_root = recipe_spec(recipe)
            raw: dict[str, Any] = {"recipe": spec, "framework": framework, "seed": seed, "steps": steps,
                                   "params": copy.deepcopy(dict(params or {})),
                                   "loss_weights": dict(loss_weights or {}), "capture": dict(capture or {}),
                                   "label": spec.split(":")[1]}
            if timeout is not None:
                raw["timeout"] = timeout
            configs.append(RunConfig.from_dict(raw, config_dir=import_root, source=f"recipe {spec}"))
        return self._assert_pair(configs[0], configs[1], rtol=rtol, atol=atol, ignore=ignore)

    def _assert_pair(self, first: RunConfig, second: RunConfig, *, rtol: float, atol: float,
                     ignore: tuple[str, ...]) -> Comparison:
        __tracebackhide__ = True
        from audit.diff import compare_traces

        if first.label == second.label:
            first.label, second.label = f"{first.label} (A)", f"{second.label} (B)"
        with self._folder() as folder:
            traces = self._record([first, second], folder)
            comparison = compare_traces(traces[0], traces[1], rtol=rtol, atol=atol, ignore=ignore)
            if not comparison.identical:
                headline = f"{first.label!r} and {second.label!r} are not identical{_tolerance_words(rtol, atol)}"
                self._fail(headline, comparison, folder, traces[0], traces[1])
        return comparison

    def _resolve(self, config: ConfigSource, *, overrides: Sequence[str], steps: int | None) -> RunConfig:
        overrides = (overrides,) if isinstance(overrides, str) else tuple(overrides)
        if isinstance(config, (str, os.PathLike)):
            path = Path(config)
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            return refuse_launch(load_config(path, overrides=overrides, steps=steps), what="the pytest plugin")
        if isinstance(config, RunConfig):
            raw, config_dir, source = config.to_dict(), config.config_dir, config.source
        elif isinstance(config, Mapping):
            raw, config_dir, source = copy.deepcopy(dict(config)), None, None
            if callable(raw.get("recipe")):
                raw["recipe"], config_dir = recipe_spec(raw["recipe"])
            if isinstance(raw.get("recipe"), str) and ":" in raw["recipe"]:
                raw.setdefault("label", raw["recipe"].split(":")[-1])
        else:
            raise TypeError(f"config must be a path, a RunConfig or a mapping, got {type(config).__name__}")
        for override in overrides:
            apply_override(raw, override)
        if steps is not None:
            raw["steps"] = steps
        return RunConfig.from_dict(raw, config_dir=config_dir, source=source)

    def _record(self, configs: Sequence[RunConfig], folder: _AssertionFolder) -> list[Trace]:
        __tracebackhide__ = True
        jobs = [(config, folder.path / f"{index}-{_slug(config.label)}.trace") for index, config in enumerate(configs, 1)]
        results = record_all(jobs, parallel=self.parallel)
        failed = [result for result in results if not result.ok]
        if failed:
            if not folder.keeps_failures:  # the temporary folder goes: do not point at traces in it
                failed = [RunResult(result.label, None, False, result.error) for result in failed]
            raise RunFailed(_failures_text(failed),
                            trace_path=str(failed[0].trace_path) if failed[0].trace_path else None)
        return [Trace(path) for _, path in jobs]

    def _fail(self, headline: str, comparison: Comparison, folder: _AssertionFolder, trace_a: Trace,
              trace_b: Trace, *, check: Sequence[Comparison] | None = None) -> None:
        __tracebackhide__ = True
        from reports.pytest_message import failure_message

        report_path = None
        if self.report_dir is not None:
            report_path = self._write_report(comparison, trace_a, trace_b, check)
        kept = folder.path if folder.keeps_failures else None
        message = failure_message(headline, comparison, report=str(report_path) if report_path else None,
                                  traces=str(kept) if kept else None, verbose=self.verbose)
        raise RunsDiverged(message, comparison=comparison, comparisons=check or (), report_path=report_path,
                           trace_dir=kept)

    def _write_report(self, comparison: Comparison, trace_a: Trace, trace_b: Trace,
                      check: Sequence[Comparison] | None) -> Path:
        from reports.html import write_html

        assert self.report_dir is not None
        suffix = f"-{len(self.reports) + 1}" if self.reports else ""
        path = Path(self.report_dir) / f"{self.report_name}{suffix}.html"
        write_html(path, comparison, trace_a=trace_a, trace_b=trace_b, check=check)
        self.reports.append(path)
        return path

    def _folder(self) -> _AssertionFolder:
        self._assertions += 1
        return _AssertionFolder(self.workdir, self._assertions)


class _AssertionFolder:
    """The traces of one assertion: removed when it passes; kept when it fails, unless they are temporary."""

    def __init__(self, workdir: Path | None, number: int) -> None:
        self.keeps_failures = workdir is not None
        if workdir is None:
            self.path = Path(tempfile.mkdtemp(prefix="repro-audit-"))
        else:
            self.path = Path(workdir) / f"assertion-{number}"
            self.path.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> _AssertionFolder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None or not self.keeps_failures:
            shutil.rmtree(self.path, ignore_errors=True)


def recipe_spec(recipe: RecipeSource) -> tuple[str, str | None]:
    """'module:function' for a recipe, and the folder a fresh process imports its module from.

    Each run is a fresh process, so a callable must be importable there by name: a module-level function
    of an importable module. Lambdas, nested functions and methods are refused with the fix in the message.
    """
    if isinstance(recipe, str):
        if recipe.count(":") != 1 or not all(recipe.split(":")):
            raise ConfigError(f"recipe must be 'module:function', got {recipe!r}")
        return recipe, None
    if not callable(recipe):
        raise TypeError(f"recipe must be a callable or a 'module:function' string, got {type(recipe).__name__}")
    module_name = getattr(recipe, "__module__", None)
    qualname = getattr(recipe, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        raise ConfigError(f"recipe {recipe!r} has no module-level name (a functools.partial or a callable "
                          "object?): each run is a fresh process, so pass a module-level function or "
                          "'module:function'")
    where = f"{module_name}:{qualname}"
    if "<lambda>" in qualname or "<locals>" in qualname:
        kind = "a lambda" if "<lambda>" in qualname else "a function defined inside another function"
        raise ConfigError(f"recipe {where} is {kind}: each run is a fresh process that imports the recipe "
                          "by name, so define it at the top level of a module")
    if "." in qualname:
        raise ConfigError(f"recipe {where} is a method: define the recipe as a module-level function")
    module = sys.modules.get(module_name)
    if module_name == "__main__" or module is None or getattr(module, qualname, None) is not recipe:
        raise ConfigError(f"recipe {where} cannot be imported by that name in a fresh process: define it "
                          "at the top level of an importable module (not __main__, not redefined or wrapped)")
    return f"{module_name}:{qualname}", _import_root(module_name, getattr(module, "__file__", None))


def recipe_framework(recipes: Sequence[RecipeSource]) -> str:
    """'tensorflow' when the first recipe module we can see imports TensorFlow or Keras and not torch, else
    'torch': what the module imports says which framework builds its model, without building it here."""
    for recipe in recipes:
        module_name = recipe.split(":")[0] if isinstance(recipe, str) else getattr(recipe, "__module__", None)
        module = sys.modules.get(str(module_name))
        if module is None:
            continue
        roots = {_root_package(value) for value in vars(module).values()}
        if "torch" in roots:
            return "torch"
        if roots & {"tensorflow", "keras", "tf_keras"}:
            return "tensorflow"
    return "torch"


def _root_package(value: Any) -> str:
    """The top-level package a module, class or function of a module's namespace comes from."""
    name = value.__name__ if isinstance(value, type(sys)) else getattr(value, "__module__", None)
    return name.split(".")[0] if isinstance(name, str) else ""


def _import_root(module_name: str, module_file: str | None) -> str | None:
    """The sys.path entry that makes `module_name` importable from `module_file`."""
    if not module_file:
        return None
    path = Path(module_file).resolve()
    levels = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    root = path.parent
    for _ in range(levels):
        root = root.parent
    return str(root)


def _compare_runs(traces: Sequence[Trace], *, rtol: float, atol: float,
                  ignore: tuple[str, ...]) -> list[Comparison]:
    """Run 1 against each later run; `compare_check` unless categories are left out."""
    if not ignore:
        from audit.diff import compare_check

        return list(compare_check(list(traces), rtol=rtol, atol=atol))
    from audit.diff import compare_traces

    return [compare_traces(traces[0], trace, rtol=rtol, atol=atol, ignore=ignore) for trace in traces[1:]]


def _categories(ignore: Sequence[str] | str) -> tuple[str, ...]:
    names = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    unknown = [name for name in names if name not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r} in ignore (known: {', '.join(CATEGORIES)})")
    return names


def _failures_text(failed: Sequence[RunResult]) -> str:
    """One paragraph per distinct problem: two runs failing the same way are said once."""
    paragraphs: list[str] = []
    seen: dict[tuple[Any, ...], list[str]] = {}
    for result in failed:
        error = result.error or {}
        key = (error.get("kind"), error.get("type"), error.get("message"), error.get("step"))
        if key in seen:
            seen[key].append(result.label)
            continue
        seen[key] = []
        paragraphs.append(_failure_text(result))
    for index, labels in enumerate(seen.values()):
        if labels:
            paragraphs[index] += f"\n({', '.join(repr(label) for label in labels)} failed the same way)"
    return "\n".join(paragraphs)


def _failure_text(result: RunResult) -> str:
    """The runner's one line, plus the end of the recipe's traceback when the recipe itself crashed."""
    line = result.failure_line()
    error = result.error or {}
    if error.get("kind") != "crash" or not error.get("traceback"):
        return line
    tail = [text for text in str(error["traceback"]).rstrip().splitlines() if text.strip()][-TRACEBACK_LINES:]
    return line + "\n" + "\n".join(f"    {text}" for text in tail)


def _tolerance_words(rtol: float, atol: float) -> str:
    return f" within rtol={rtol:g}, atol={atol:g}" if rtol or atol else " (bitwise)"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")[:60] or "run"


def assert_deterministic(config: ConfigSource, **options: Any) -> list[Comparison]:
    """`Auditor().assert_deterministic(...)` with traces in a temporary folder."""
    __tracebackhide__ = True
    return Auditor().assert_deterministic(config, **options)


def assert_identical(config_a: ConfigSource, config_b: ConfigSource | None = None, **options: Any) -> Comparison:
    """`Auditor().assert_identical(...)` with traces in a temporary folder."""
    __tracebackhide__ = True
    return Auditor().assert_identical(config_a, config_b, **options)


def assert_recipes_identical(recipe_a: RecipeSource, recipe_b: RecipeSource, **options: Any) -> Comparison:
    """`Auditor().assert_recipes_identical(...)` with traces in a temporary folder."""
    __tracebackhide__ = True
    return Auditor().assert_recipes_identical(recipe_a, recipe_b, **options)

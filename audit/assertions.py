"""Assert that training runs are identical: the library API behind the pytest plugin, usable without pytest.

Each assertion records its runs through `repro_audit.audit.runner` (one fresh process per run, two at a time), compares
the traces and, on a divergence, raises `RunsDiverged` whose message is at most 12 lines naming the cause
(reports/pytest_message.py): a summary to read in a test log, not a dump. A run that could not be recorded
(crash, timeout, bad config) is not a divergence: it raises the project's user-facing `RunFailed` or
`ConfigError`. Golden traces (a run stored in the repository) are in audit/pytest_golden.py.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from repro_audit.audit.config import RunConfig, apply_override, load_config, refuse_launch
from repro_audit.audit.divergence import CATEGORIES, Comparison
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.pytest_recipes import RecipeSource, recipe_framework, recipe_spec
from repro_audit.audit.runner import RunResult
from repro_audit.audit.trace import Trace

ConfigSource = Union[str, "os.PathLike[str]", RunConfig, Mapping[str, Any]]

TRACEBACK_LINES = 6  # last lines of a crashed recipe's traceback quoted in the error


class ReproAuditFailure(AssertionError):
    """A repro-audit assertion that failed; the first line of the message names the cause, and the pytest
    plugin puts it in the short test summary."""


class RunsDiverged(ReproAuditFailure):
    """Runs that should be identical are not; the message is a few lines naming the cause."""

    def __init__(self, message: str, *, comparison: Comparison, comparisons: Sequence[Comparison] = (),
                 report_path: Path | None = None, trace_dir: Path | None = None) -> None:
        super().__init__(message)
        self.comparison = comparison
        self.comparisons = list(comparisons) or [comparison]
        self.report_path = report_path
        self.trace_dir = trace_dir


class NonFiniteRun(ReproAuditFailure):
    """A run that matches its golden trace, or would become one, has NaN/Inf: equal runs can be equally
    broken, so a golden comparison does not pass on NaN = NaN unless asked to (`allow_nonfinite=True`)."""


@dataclass(frozen=True)
class AssertionDefaults:
    """What an assertion uses where the test does not say: the plugin fills it from its ini options and flags.

    `steps` None keeps the config's own; `ignore` is added to each assertion's own `ignore=`.
    """

    steps: int | None = None
    runs: int = 2
    rtol: float = 0.0
    atol: float = 0.0
    ignore: tuple[str, ...] = ()


@dataclass
class Auditor:
    """Records and compares runs for assertions; the pytest fixture is one of these per test.

    `workdir`: where traces go; failing assertions keep theirs there, passing ones remove theirs. Without
    it each assertion uses a temporary folder removed afterwards. `report_dir`: write the HTML report of
    every failing comparison there, named after `report_name`; `report_hint`: what the message says instead
    when there is none. `base_dir`: what relative config paths are relative to (the working directory when
    None); `golden_dir`: what relative golden paths are relative to (`base_dir` when None). `verbosity`:
    pytest's -v, for a longer failure message (never more than 12 lines). `notes`: what golden assertions
    wrote, for the session's summary.
    """

    workdir: Path | None = None
    report_dir: Path | None = None
    report_name: str = "repro-audit"
    report_hint: str | None = None
    base_dir: Path | None = None
    golden_dir: Path | None = None
    update_golden: bool = False
    defaults: AssertionDefaults = field(default_factory=AssertionDefaults)
    verbosity: int = 0
    parallel: bool | None = None
    reports: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _assertions: int = field(default=0, init=False, repr=False)

    def __repr__(self) -> str:  # pytest shows the fixture's value beside a failing test: keep it one word
        return f"<repro-audit Auditor {self.report_name}>"

    def assert_deterministic(self, config: ConfigSource, *, runs: int | None = None, steps: int | None = None,
                             overrides: Sequence[str] = (), rtol: float | None = None, atol: float | None = None,
                             ignore: Sequence[str] = ()) -> list[Comparison]:
        """Run one config `runs` times; every run must match run 1 (bitwise unless rtol/atol say otherwise)."""
        __tracebackhide__ = True
        runs = self.defaults.runs if runs is None else runs
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
            raise ValueError(f"runs must be an integer >= 2, got {runs!r}")
        rtol, atol, ignore = self._with_defaults(rtol, atol, ignore)
        base = self._resolve(config, overrides=overrides, steps=self._steps(steps))
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
                others = ", ".join(f"{comparisons.index(c) + 2}" for c in diverged)
                plural = "s" if len(diverged) > 1 else ""
                runs_text = f"{base.label!r} run{plural} {others} of {runs} vs run 1"
                self._fail("not deterministic", runs_text, diverged[0], folder, traces[0],
                           traces[comparisons.index(diverged[0]) + 1], check=comparisons)
        return comparisons

    def assert_identical(self, config_a: ConfigSource, config_b: ConfigSource | None = None, *,
                         overrides_a: Sequence[str] = (), overrides_b: Sequence[str] = (),
                         steps: int | None = None, rtol: float | None = None, atol: float | None = None,
                         ignore: Sequence[str] = ()) -> Comparison:
        """Run two configs (or config A against itself with `overrides_b`) and require the same training."""
        __tracebackhide__ = True
        if config_b is None and not overrides_b:
            raise ValueError("give config_b, or overrides_b to compare config_a against itself with a change")
        rtol, atol, ignore = self._with_defaults(rtol, atol, ignore)
        steps = self._steps(steps)
        first = self._resolve(config_a, overrides=overrides_a, steps=steps)
        second = self._resolve(config_a if config_b is None else config_b, overrides=overrides_b, steps=steps)
        return self._assert_pair(first, second, rtol=rtol, atol=atol, ignore=ignore)

    def assert_recipes_identical(self, recipe_a: RecipeSource, recipe_b: RecipeSource, *,
                                 params: Mapping[str, Any] | None = None, seed: int = 0, steps: int | None = None,
                                 framework: str | None = None, loss_weights: Mapping[str, float] | None = None,
                                 capture: Mapping[str, Any] | None = None, timeout: float | None = None,
                                 rtol: float | None = None, atol: float | None = None,
                                 ignore: Sequence[str] = ()) -> Comparison:
        """Train two recipes (callables or 'module:function') with the same settings; no config file needed.

        The `config` category is always left out: both configs are built from the same arguments here, so
        the recipe's name is their only difference, and that difference is the point of the assertion.
        `framework` defaults to the one the recipes' modules import (a Keras recipe needs no argument);
        `steps` to 3 where neither the test nor the plugin's settings say.
        """
        __tracebackhide__ = True
        rtol, atol, ignore = self._with_defaults(rtol, atol, ignore)
        ignore = tuple(dict.fromkeys(ignore + ("config",)))
        steps = self._steps(steps) or 3
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
        from repro_audit.audit.diff import compare_traces

        runs = f"{first.label!r} (A) vs {second.label!r} (B)"
        if first.label == second.label:
            first.label, second.label = f"{first.label} (A)", f"{second.label} (B)"
            runs = f"{first.label!r} vs {second.label!r}"
        with self._folder() as folder:
            traces = self._record([first, second], folder)
            comparison = compare_traces(traces[0], traces[1], rtol=rtol, atol=atol, ignore=ignore)
            if not comparison.identical:
                self._fail("not identical", runs, comparison, folder, traces[0], traces[1])
        return comparison

    def assert_matches_golden(self, config: ConfigSource, *, golden: str | os.PathLike[str],
                              steps: int | None = None, overrides: Sequence[str] = (), rtol: float | None = None,
                              atol: float | None = None, ignore: Sequence[str] = (),
                              allow_nonfinite: bool = False) -> Comparison | None:
        """A fresh run of `config` must match the trace stored at `golden` (bitwise unless rtol/atol say).

        Where the golden trace does not exist yet, or `update_golden` is set (`--repro-audit-update-golden`),
        the run is recorded there instead, the assertion passes and `notes` says so; None is returned. A run
        with NaN/Inf fails unless `allow_nonfinite`, even when the golden trace has the same NaN.
        """
        __tracebackhide__ = True
        from repro_audit.audit import pytest_golden as goldens

        rtol, atol, ignore = self._with_defaults(rtol, atol, ignore)
        run = self._resolve(config, overrides=overrides, steps=self._steps(steps))
        path = goldens.golden_path(golden, folder=self.golden_dir or self.base_dir)
        shown = goldens.shown_path(path, self.base_dir)
        if self.update_golden or not os.path.lexists(path):
            self.notes.append(goldens.write_golden(run, path, rtol=rtol, atol=atol, ignore=ignore, shown=shown,
                                                   allow_nonfinite=allow_nonfinite, parallel=self.parallel))
            return None
        stored = goldens.open_golden(path)
        with self._folder() as folder:
            fresh = self._record([run], folder)[0]
            comparison = goldens.compare_with_golden(stored, fresh, rtol=rtol, atol=atol, ignore=ignore)
            if not comparison.identical:
                self._fail("differs from golden", f"golden {shown} (A) vs a fresh run of {run.label!r} (B)",
                           comparison, folder, stored, fresh)
            problem = None if allow_nonfinite else goldens.first_nonfinite(fresh)
            if problem is not None:
                kept = f"\n  traces kept in {folder.path}" if folder.keeps_failures else ""
                raise NonFiniteRun(f"matches the golden trace, but both runs have NaN/Inf: {problem}\n"
                                   f"  golden: {shown}; pass allow_nonfinite=True if a broken run is the expected "
                                   f"result{kept}")
        return comparison

    def _steps(self, steps: int | None) -> int | None:
        return self.defaults.steps if steps is None else steps

    def _with_defaults(self, rtol: float | None, atol: float | None,
                   ignore: Sequence[str] | str) -> tuple[float, float, tuple[str, ...]]:
        """The test's tolerances, else the defaults; its ignored categories with the defaults' added."""
        ignored = tuple(dict.fromkeys(ignored_categories(ignore) + self.defaults.ignore))
        return (self.defaults.rtol if rtol is None else rtol, self.defaults.atol if atol is None else atol, ignored)

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
        return record_runs(jobs, parallel=self.parallel, traces_kept=folder.keeps_failures)

    def _fail(self, verdict: str, runs: str, comparison: Comparison, folder: _AssertionFolder, trace_a: Trace,
              trace_b: Trace, *, check: Sequence[Comparison] | None = None) -> None:
        __tracebackhide__ = True
        from repro_audit.reports.pytest_message import failure_message

        report_path = None
        if self.report_dir is not None:
            report_path = self._write_report(comparison, trace_a, trace_b, check)
        kept = folder.path if folder.keeps_failures else None
        message = failure_message(comparison, verdict=verdict, runs=runs,
                                  report=str(report_path) if report_path else None, hint=self.report_hint,
                                  traces=str(kept) if kept else None, verbosity=self.verbosity)
        raise RunsDiverged(message, comparison=comparison, comparisons=check or (), report_path=report_path,
                           trace_dir=kept)

    def _write_report(self, comparison: Comparison, trace_a: Trace, trace_b: Trace,
                      check: Sequence[Comparison] | None) -> Path:
        from repro_audit.reports.html import write_html

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


def record_runs(jobs: Sequence[tuple[RunConfig, Path]], *, parallel: bool | None = None,
                traces_kept: bool = True) -> list[Trace]:
    """Record each config into its path (two at a time) and open the traces; RunFailed, with a paragraph per
    distinct problem, if any run failed. `traces_kept=False` when the caller removes the traces, so the
    message does not point at them."""
    __tracebackhide__ = True
    results = record_all(jobs, parallel=parallel)
    failed = [result for result in results if not result.ok]
    if failed:
        if not traces_kept:
            failed = [RunResult(result.label, None, False, result.error) for result in failed]
        raise RunFailed(_failures_text(failed), trace_path=str(failed[0].trace_path) if failed[0].trace_path else None)
    return [Trace(path) for _, path in jobs]


def _compare_runs(traces: Sequence[Trace], *, rtol: float, atol: float,
                  ignore: tuple[str, ...]) -> list[Comparison]:
    """Run 1 against each later run; `compare_check` unless categories are left out."""
    if not ignore:
        from repro_audit.audit.diff import compare_check

        return list(compare_check(list(traces), rtol=rtol, atol=atol))
    from repro_audit.audit.diff import compare_traces

    return [compare_traces(traces[0], trace, rtol=rtol, atol=atol, ignore=ignore) for trace in traces[1:]]


def ignored_categories(ignore: Sequence[str] | str) -> tuple[str, ...]:
    """Category names to leave out, checked: the same names `repro-audit --ignore` takes, `health` included
    (it drops the health section). ValueError for an unknown name, with the nearest known one."""
    names = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    for name in names:
        if name not in CATEGORIES:
            near = difflib.get_close_matches(str(name), CATEGORIES, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ValueError(f"unknown category {name!r} in ignore ({hint}known: {', '.join(CATEGORIES)})")
    return tuple(dict.fromkeys(names))


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

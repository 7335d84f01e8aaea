"""Golden traces: compare a fresh run with a run stored in the repository, as snapshot plugins do.

`Auditor.assert_matches_golden` records a fresh run and compares it with the stored one. Where there is no
golden trace yet, or `--repro-audit-update-golden` is given, the run is recorded as the golden trace instead:
into a hidden folder beside it through the runner and the trace writer, then renamed over it only once it
is complete, so a failed or interrupted run never leaves a half-written golden trace. A golden trace is read
like any trace (JSON, JSON lines, safetensors; nothing is unpickled), so one from a pull request is data.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from repro_audit.audit.assertions import NonFiniteRun, record_runs
from repro_audit.audit.config import RunConfig
from repro_audit.audit.divergence import Comparison, Divergence
from repro_audit.audit.errors import ConfigError, TraceError, UserError
from repro_audit.audit.trace import Trace
from repro_audit.audit.trace.staging import check_replaceable, output_error

# A golden trace lives in the repository it tests, so the repository's commit and dirty flag differ from
# every later run's by construction, and so do those of an editable install of that repository: those facts
# are dropped from a golden comparison. The source of every imported module is still compared, so a changed
# recipe is still a code change.
GIT_STATE = frozenset({"git commit", "git dirty"})
LOCAL_CHANGES = "local changes "  # an installed package edited after install, or an editable install
SUMMARY_GROUPS = ("gradients", "parameters")  # step record sections of tensor summaries with NaN/Inf counts


def golden_path(golden: str | os.PathLike[str], *, folder: Path | None) -> Path:
    """Where the golden trace is: `golden` as given when absolute, else under `folder` (the rootdir)."""
    if not isinstance(golden, (str, os.PathLike)) or not str(golden).strip():
        raise ConfigError(f"golden must be a path such as 'tests/golden/train.trace', got {golden!r}")
    path = Path(golden).expanduser()
    if not path.is_absolute() and folder is not None:
        path = Path(folder) / path
    return path


def shown_path(path: Path, base: Path | None) -> str:
    """The path as a message shows it: relative to `base` (the rootdir) where it is inside it."""
    if base is not None:
        try:
            return str(path.resolve().relative_to(Path(base).resolve()))
        except ValueError:
            pass
    return str(path)


def open_golden(path: Path) -> Trace:
    """The stored trace; a TraceError with the fix when it cannot be compared with."""
    hint = "record it again with --repro-audit-update-golden"
    try:
        trace = Trace(path)
        complete = trace.complete
    except TraceError as exc:
        raise TraceError(f"golden trace {path}: {exc}; {hint}") from None
    if not complete:
        raise TraceError(f"golden trace {path} is incomplete (its run stopped early); {hint}")
    return trace


def compare_with_golden(golden: Trace, fresh: Trace, *, rtol: float, atol: float,
                        ignore: tuple[str, ...]) -> Comparison:
    """The golden trace as run A, the fresh run as run B, without the repository's git state."""
    from repro_audit.audit.diff import compare_traces

    return without_git_state(compare_traces(golden, fresh, rtol=rtol, atol=atol, ignore=ignore))


def without_git_state(comparison: Comparison) -> Comparison:
    """The comparison less the divergences that only say a repository is at another commit, and any code
    change summary left with nothing under it."""
    roots = [kept for root in comparison.divergences if (kept := _prune(root)) is not None]
    dropped = sum(1 for d in comparison.walk() if _git_state_only(d))
    counts = {category: dict(numbers) for category, numbers in comparison.category_counts.items()}
    if dropped and "code" in counts:
        counts["code"]["diverged"] = max(0, counts["code"].get("diverged", 0) - dropped)
    return replace(comparison, divergences=roots, category_counts=counts)


def _prune(divergence: Divergence) -> Divergence | None:
    if _git_state_only(divergence):
        return None
    children = [kept for child in divergence.children if (kept := _prune(child)) is not None]
    if divergence.children and not children and divergence.cause == "code_change":
        return None  # a code-change summary of nothing but the git state
    return replace(divergence, children=children)


def _git_state_only(divergence: Divergence) -> bool:
    """A code divergence that says only that a repository (the recipe's, or an editable install's) is at
    another commit or dirty state."""
    if divergence.category != "code":
        return False
    if divergence.name in GIT_STATE:
        return True
    modified = divergence.evidence.get("modified")
    return divergence.name.startswith(LOCAL_CHANGES) and isinstance(modified, dict) and \
        modified.get("a") == modified.get("b")


def first_nonfinite(trace: Trace) -> str | None:
    """Where a run first has NaN/Inf (its loss, a loss term, a gradient or a parameter), in a few words."""
    for record in trace.steps:
        step = record.get("step")
        losses = {"total loss": record.get("total_loss")}
        losses.update({f"loss term {name}": (term or {}).get("value")
                       for name, term in (record.get("loss_terms") or {}).items()})
        for name, value in losses.items():
            if isinstance(value, float) and not math.isfinite(value):
                return f"{name} is {value} at step {step}"
        for group in SUMMARY_GROUPS:
            for name, summary in (record.get(group) or {}).items():
                found = _nonfinite_counts(summary)
                if found:
                    return f"{group} {name} has {found} at step {step}"
    return None


def _nonfinite_counts(summary: Any) -> str:
    if not isinstance(summary, dict):
        return ""
    counts = [f"{summary[key]} {label}" for key, label in (("nan", "NaN"), ("inf", "Inf"))
              if isinstance(summary.get(key), int) and summary[key] > 0]
    return " and ".join(counts)


def write_golden(config: RunConfig, path: Path, *, rtol: float, atol: float, ignore: tuple[str, ...],
                 allow_nonfinite: bool, parallel: bool | None = None, shown: str | None = None) -> str:
    """Record `config` as the golden trace at `path`; the note for the session's summary, which names the
    trace as `shown` (the path relative to the rootdir).

    An existing golden trace that the new run matches (within the tolerance) is left as it is, so updating
    changes no file that did not change. NonFiniteRun, and nothing written, for a run with NaN/Inf unless
    `allow_nonfinite`.
    """
    __tracebackhide__ = True
    shown = shown or str(path)
    check_replaceable(path)  # never replace a file or a folder that is not a trace
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.recording-", dir=path.parent))
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        fresh = record_runs([(config, staging / "run.trace")], parallel=parallel, traces_kept=False)[0]
        problem = None if allow_nonfinite else first_nonfinite(fresh)
        if problem is not None:
            raise NonFiniteRun(f"golden trace not written: the run has NaN/Inf: {problem}\n  golden: {shown}; "
                               "pass allow_nonfinite=True if a broken run is the expected result")
        steps = len(fresh.steps)
        if not os.path.lexists(path):
            replace_trace(fresh.path, path)
            return f"{shown}: written (new golden trace, {steps} step{'' if steps == 1 else 's'})"
        change = _change(path, fresh, rtol=rtol, atol=atol, ignore=ignore)
        if change is None:
            return f"{shown}: unchanged (the run matches it)"
        replace_trace(fresh.path, path)
        return f"{shown}: updated ({change})"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _change(path: Path, fresh: Trace, *, rtol: float, atol: float, ignore: tuple[str, ...]) -> str | None:
    """What the new run changes against the old golden trace; None when nothing; why it could not be compared."""
    from repro_audit.reports.pytest_message import cause_line

    try:
        comparison = compare_with_golden(open_golden(path), fresh, rtol=rtol, atol=atol, ignore=ignore)
    except UserError as exc:
        return f"the old one could not be compared: {exc}"
    return None if comparison.identical else cause_line(comparison)


def replace_trace(new: Path, final: Path) -> None:
    """Move the finished trace `new` to `final`, over an old trace there; both are in the same folder, so
    each step is a rename and `final` always holds a whole trace (the old one, then the new one)."""
    check_replaceable(final)
    aside = None
    try:
        if os.path.lexists(final):
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.replaced-", dir=final.parent))
            os.replace(final, aside / "trace")
        os.replace(new, final)
    except OSError as exc:
        if aside is not None and not os.path.lexists(final) and os.path.lexists(aside / "trace"):
            os.replace(aside / "trace", final)  # put the old golden trace back
        raise output_error(final, exc) from exc
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

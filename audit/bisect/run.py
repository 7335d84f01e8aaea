"""`bisect A B`: which of the changes from A to B make A diverge the way B does?

A and B are recorded first; B's first divergence from A (in what the runs computed: environment, code and
config themselves are inputs, not outcomes) is the target. A subset of changes reproduces when A with those
changes applied has a first divergence of the same identity (category, name, step). The empty subset is
tested too: a run of A that diverges from A makes any answer meaningless, and bisect says so.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from repro_audit.audit.bisect.changes import Change, apply_changes, code_changes, config_changes
from repro_audit.audit.bisect.ddmin import ddmin
from repro_audit.audit.bisect.result import BisectResult, Identity, TestedSubset
from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import UserError
from repro_audit.audit.executors.base import Executor, RunJob, RunsDone
from repro_audit.audit.outputs import trace_file_name
from repro_audit.audit.runner import RunResult, raise_for_failures
from repro_audit.audit.trace import Trace

INPUTS = ("environment", "code", "config", "health")  # not outcomes: left out of the divergence compared


class Bisection:
    """State of one bisection: the traces recorded so far and every subset's answer."""

    def __init__(self, config_a: RunConfig, config_b: RunConfig, *, folder: Path, executor: Executor,
                 on_done: RunsDone | None = None, traces_kept: bool = True) -> None:
        self.config_a, self.config_b = config_a, config_b
        self.folder, self.executor, self.on_done, self.traces_kept = folder, executor, on_done, traces_kept
        self.tested: dict[frozenset[str], TestedSubset] = {}
        self.runs = 0
        self.trace_a: Trace | None = None
        self.target: Identity | None = None

    def run(self) -> BisectResult:
        trace_a, trace_b = self._record([("A", self.config_a), ("B", self.config_b)])
        self.trace_a = trace_a
        self.target = first_divergence(trace_a, trace_b)
        changes = config_changes(self.config_a, self.config_b)
        if self.config_a.config_dir != self.config_b.config_dir:
            changes += code_changes(trace_a, trace_b)
        result = BisectResult(label_a=self.config_a.label, label_b=self.config_b.label, changes=changes,
                              target=self.target)
        if self.target is None or not changes:
            result.notes.append("A and B do not diverge in what they compute: nothing to bisect" if self.target is None
                                else "A and B have the same config and code, yet diverge: see `repro-audit check`")
            result.runs = 2
            return result
        self.tested[frozenset(change.name for change in changes)] = TestedSubset([c.name for c in changes],
                                                                                self.target)
        minimal = ddmin(changes, self._reproduces_with_baseline)
        result.minimal = minimal
        result.tested = list(self.tested.values())
        result.runs = 2 + self.runs
        return result

    def _reproduces_with_baseline(self, subsets: list[list[Change]]) -> list[bool]:
        """The first round also reruns A unchanged: if that diverges, A is nondeterministic."""
        if frozenset() not in self.tested:
            answers = self._reproduces([[], *subsets])
            empty = self.tested[frozenset()]
            if empty.divergence is not None:
                raise UserError(f"A rerun unchanged diverges from A ({empty.divergence.describe()}): the runs are "
                                "not deterministic, so no subset of changes can be blamed (repro-audit check)")
            return answers[1:]
        return self._reproduces(subsets)

    def _reproduces(self, subsets: list[list[Change]]) -> list[bool]:
        new = {frozenset(c.name for c in subset): subset for subset in subsets}
        new = {key: subset for key, subset in new.items() if key not in self.tested}
        if new:
            code = any(change.kind == "code" for subset in new.values() for change in subset)
            folders = _MixedFolders(self.config_a, code=code)
            try:
                labelled: list[tuple[str, RunConfig]] = []
                for subset in new.values():
                    number = len(self.tested) + len(labelled) + 1
                    label = f"A + {len(subset)} change{'s' if len(subset) != 1 else ''} (test {number})"
                    labelled.append((label, apply_changes(self.config_a, self.config_b, subset,
                                                          scratch=folders.path(number), label=label)))
                results = self._run(labelled)
            finally:
                folders.remove()
            for (key, subset), (job, result) in zip(new.items(), results):
                assert self.trace_a is not None
                names = [c.name for c in subset]
                # A subset that cannot run (a recipe key without its module) does not reproduce: ddmin's
                # "unresolved", kept with its reason instead of ending the bisection.
                self.tested[key] = TestedSubset(names, first_divergence(self.trace_a, Trace(job.trace_path))) \
                    if result.ok else TestedSubset(names, None, failed=result.failure_line())
                self.runs += 1
        return [self.tested[frozenset(c.name for c in subset)].divergence == self.target for subset in subsets]

    def _record(self, labelled: Sequence[tuple[str, RunConfig]]) -> list[Trace]:
        """A and B: a failure of either ends the bisection."""
        results = self._run(labelled)
        raise_for_failures([result for _, result in results], traces_kept=self.traces_kept)
        return [Trace(job.trace_path) for job, _ in results]

    def _run(self, labelled: Sequence[tuple[str, RunConfig]]) -> list[tuple[RunJob, RunResult]]:
        jobs = []
        for name, config in labelled:
            path = self.folder / trace_file_name(name if name in ("A", "B") else config.label, prefix="bisect-")
            jobs.append(RunJob(config, path))
        return list(zip(jobs, self.executor.run(jobs, on_done=self.on_done)))


class _MixedFolders:
    """Copies of A's recipe folder with some of B's modules. With code changes each sits beside A's folder
    (same depth, so a recipe that finds its siblings through `Path(__file__).parents[k]` still does), under a
    hidden name; else in a temporary folder. `remove` deletes every one made."""

    def __init__(self, config: RunConfig, *, code: bool) -> None:
        self._root = None if code and config.config_dir else Path(tempfile.mkdtemp(prefix="repro-audit-bisect-"))
        parent = self._root or Path(str(config.config_dir)).parent
        self._prefix = f".repro-audit-bisect-{secrets.token_hex(4)}"
        self._parent = parent
        self._made: list[Path] = []

    def path(self, number: int) -> Path:
        folder = self._parent / f"{self._prefix}-t{number}"
        self._made.append(folder)
        return folder

    def remove(self) -> None:
        for folder in self._made:
            shutil.rmtree(folder, ignore_errors=True)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


def first_divergence(trace_a: Trace, trace_x: Trace) -> Identity | None:
    """The first divergence of run X from run A in causal order, in what the runs computed."""
    from repro_audit.audit.diff import compare_traces

    comparison = compare_traces(trace_a, trace_x, ignore=INPUTS)
    first = comparison.first_divergence
    if first is None:
        return None
    return Identity(category=first.category, name=first.name, step=first.step, explanation=first.explanation)

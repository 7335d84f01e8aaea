"""Golden traces through `pytester`, on the tiny torch recipe (one step per run).

One inner project lives through a golden trace's life in four sessions, one run per assertion: created
(the ini options set the steps and the folder: they reach the runs), compared, failing once the recipe
changes (with the HTML report where the flag, not the ini option, says), updated with
--repro-audit-update-golden. NaN in the golden trace and in the fresh run fails, as does writing a NaN run
as a golden trace; a failed update leaves the golden trace as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro_audit.audit.divergence import Comparison, Divergence, RunInfo
from repro_audit.audit.pytest_golden import without_git_state
from tests.audit.test_pytest_plugin import (
    assert_short_message,
    failure_sections,
    message_lines,
    plugin_args,
    summary_line,
)

pytest_plugins = ["pytester"]

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_mlp.py"

INI = """[pytest]
pythonpath = .
repro_audit_steps = 1
repro_audit_golden_dir = tests/golden
repro_audit_report_dir = ini_reports
"""

GOLDEN = '''
def test_golden(repro_audit):
    repro_audit.assert_matches_golden({"recipe": "tiny_mlp:build"}, golden="tiny.trace")
'''

NAN_CREATE = '''
def test_nan_is_not_written_as_golden(repro_audit):
    repro_audit.assert_matches_golden({"recipe": "tiny_mlp:build_masked_entropy"}, golden="refused.trace")


def test_nan_golden_when_asked_for(repro_audit):
    repro_audit.assert_matches_golden({"recipe": "tiny_mlp:build_masked_entropy"}, golden="nan.trace",
                                      allow_nonfinite=True)
'''

NAN_COMPARE = '''
def test_nan_in_both_runs_fails(repro_audit):
    repro_audit.assert_matches_golden({"recipe": "tiny_mlp:build_masked_entropy"}, golden="nan.trace")
'''

BROKEN_UPDATE = '''
def test_failed_update_keeps_the_golden(repro_audit):
    repro_audit.assert_matches_golden({"recipe": "tiny_mlp:build_wrong_return"}, golden="nan.trace")
'''


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
            tmp_path_factory: pytest.TempPathFactory) -> pytest.Pytester:
    """An inner project with the tiny recipes and a pytest.ini; runs use one intra-op thread each."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "400")  # the short summary line shows its whole first line
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mpl")))
    pytester.makefile(".py", tiny_mlp=RECIPE.read_text(encoding="utf-8"))
    pytester.makefile(".ini", pytest=INI)
    return pytester


def test_golden_trace_is_created_compared_failed_and_updated(project: pytest.Pytester) -> None:
    project.makepyfile(test_golden=GOLDEN, test_nan_create=NAN_CREATE, test_nan_compare=NAN_COMPARE,
                       test_broken_update=BROKEN_UPDATE)
    golden = project.path / "tests" / "golden"

    created = project.runpytest_subprocess(*plugin_args(), "test_golden.py", "test_nan_create.py")
    created.assert_outcomes(passed=2, failed=1)
    output = created.stdout.str()
    # Passing with a note, as snapshot plugins do; the ini options chose the folder and the steps.
    created.stdout.fnmatch_lines(["*- repro-audit golden traces -*",
                                  ("test_golden.py::test_golden: tests/golden/tiny.trace: written (new golden trace, "
                                   "1 step)*")])
    assert _manifest(golden / "tiny.trace")["steps_recorded"] == 1
    refused = message_lines(failure_sections(output)["test_nan_is_not_written_as_golden"])
    assert refused[0].startswith("repro_audit.audit.assertions.NonFiniteRun: golden trace not written: the run has NaN/Inf: "
                                 "gradients 0.weight has "), refused
    assert sorted(path.name for path in golden.iterdir()) == ["nan.trace", "tiny.trace"], "nothing half-written"

    compared = project.runpytest_subprocess(*plugin_args(), "test_golden.py", "test_nan_compare.py")
    compared.assert_outcomes(passed=1, failed=1)
    both = assert_short_message(failure_sections(compared.stdout.str())["test_nan_in_both_runs_fails"])
    assert both[0].startswith("repro_audit.audit.assertions.NonFiniteRun: matches the golden trace, but both runs have NaN/Inf: "
                              "gradients 0.weight has "), both
    assert "repro-audit golden traces" not in compared.stdout.str(), "comparing writes nothing"

    recipe = project.path / "tiny_mlp.py"
    recipe.write_text(recipe.read_text().replace('lr=params.get("lr", 1e-2)', 'lr=params.get("lr", 2e-2)'))
    changed = project.runpytest_subprocess(*plugin_args(), "test_golden.py", "--repro-audit-report", "cli_reports")
    changed.assert_outcomes(failed=1)
    lines = assert_short_message(failure_sections(changed.stdout.str())["test_golden"])
    cause = "differs from golden: the code (1 difference) -> hyper-parameter change"
    assert lines[0] == f"repro_audit.audit.assertions.RunsDiverged: {cause}", lines
    assert lines[1].startswith("runs: golden tests/golden/tiny.trace (A) vs a fresh run of 'build' (B)"), lines
    assert summary_line(changed.stdout.str(), "test_golden.py::test_golden").endswith(f" - {cause}")
    report = project.path / "cli_reports" / "test_golden.py_test_golden.html"
    assert f"HTML report: {report}" in lines and not (project.path / "ini_reports").exists(), "the flag wins"

    before = {path.name: _manifest(path) for path in golden.iterdir()}
    updated = project.runpytest_subprocess(*plugin_args(), "test_golden.py", "test_broken_update.py",
                                           "--repro-audit-update-golden")
    updated.assert_outcomes(passed=1, failed=1)
    updated.stdout.fnmatch_lines([("test_golden.py::test_golden: tests/golden/tiny.trace: updated (the code "
                                   "(1 difference) -> hyper-parameter change)*")])
    broken = message_lines(failure_sections(updated.stdout.str())["test_failed_update_keeps_the_golden"])
    assert broken[0].startswith("repro_audit.audit.errors.RunFailed: run 'build_wrong_return'"), broken
    after = {path.name: _manifest(path) for path in golden.iterdir()}
    assert sorted(after) == ["nan.trace", "tiny.trace"], "no staging folder left behind"
    assert after["nan.trace"] == before["nan.trace"], "a failed run leaves the golden trace as it was"
    assert after["tiny.trace"]["files"] != before["tiny.trace"]["files"], "replaced by the new run"


def _manifest(trace: Path) -> dict:
    return json.loads((trace / "manifest.json").read_text(encoding="utf-8"))


def test_a_golden_comparison_leaves_out_only_the_repository_state() -> None:
    """A golden trace is committed in the repository it tests: another commit, or an editable install of it
    at another commit, is no difference; edited source is."""
    git = [Divergence("code", "git commit", "changed", evidence={"a": "1a2b", "b": "3c4d"}),
           Divergence("code", "git dirty", "changed", evidence={"a": False, "b": True}),
           Divergence("code", "local changes my-project", "changed",
                      evidence={"modified": {"a": [], "b": []}, "git": {"a": {"commit": "1a2b"}, "b": None}})]
    edited = Divergence("code", "module my_model", "changed", evidence={"module": "my_model"})
    runs = [RunInfo(label="run", trace_path=None, framework="torch", complete=True, steps_recorded=1)] * 2
    only_git = Comparison(run_a=runs[0], run_b=runs[1], category_counts={"code": {"compared": 9, "diverged": 3}},
                          divergences=[Divergence("code", "code change", "changed", cause="code_change", children=git)])
    assert without_git_state(only_git).identical
    assert without_git_state(only_git).category_counts["code"] == {"compared": 9, "diverged": 0}
    with_source = Comparison(run_a=runs[0], run_b=runs[1], divergences=[
        Divergence("code", "code change", "changed", cause="code_change", children=[*git, edited])])
    assert [d.name for d in without_git_state(with_source).walk()] == ["code change", "module my_model"]

"""The plugin's settings through `pytester`: ini options set the assertions' defaults, flags win over them,
and a bad value is one `ERROR:` line before any test runs. The inner sessions record nothing: the inner test
reads the settings off its fixture. That they reach the runs is checked with golden traces
(test_pytest_plugin_golden.py).
"""

from __future__ import annotations

import pytest

from tests.audit.test_pytest_plugin import plugin_args

pytest_plugins = ["pytester"]

SETTINGS_TEST = '''
def test_settings(repro_audit, pytestconfig):
    defaults = repro_audit.defaults
    root = pytestconfig.rootpath
    assert (defaults.steps, defaults.runs, defaults.rtol, defaults.atol) == {numbers}
    assert defaults.ignore == {ignore}
    assert (repro_audit.report_dir, repro_audit.golden_dir) == (root / {report!r}, root / {golden!r})
    assert repro_audit.update_golden is {update}
'''

PYPROJECT = """[tool.pytest.ini_options]
repro_audit_steps = "3"
repro_audit_runs = "3"
repro_audit_rtol = "1e-6"
repro_audit_ignore = ["environment", "health"]
repro_audit_report_dir = "ini_reports"
repro_audit_golden_dir = "goldens"
"""


def test_ini_options_set_the_defaults_and_flags_win(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(test_ini=SETTINGS_TEST.format(numbers=(3, 3, 1e-6, 0.0), ignore=("environment", "health"),
                                                      report="ini_reports", golden="goldens", update=False))
    pytester.runpytest_inprocess(*plugin_args(), "test_ini.py").assert_outcomes(passed=1)
    pytester.makepyfile(test_flags=SETTINGS_TEST.format(numbers=(1, 2, 1e-6, 0.5), ignore=("graph", "code"),
                                                        report="cli_reports", golden="goldens", update=True))
    flags = pytester.runpytest_inprocess(*plugin_args(), "test_flags.py", "--repro-audit-steps", "1",
                                         "--repro-audit-runs", "2", "--repro-audit-atol", "0.5",
                                         "--repro-audit-ignore", "graph", "--repro-audit-ignore", "code",
                                         "--repro-audit-report", "cli_reports", "--repro-audit-update-golden")
    flags.assert_outcomes(passed=1)


@pytest.mark.parametrize("ini, words", [
    ("repro_audit_steps = two", "ERROR: repro_audit_steps in pytest.ini: expected a whole number >= 1, got 'two'"),
    ("repro_audit_runs = 1", "ERROR: repro_audit_runs in pytest.ini: expected a whole number >= 2, got '1'"),
    ("repro_audit_atol = -1", "ERROR: repro_audit_atol in pytest.ini: expected a number >= 0, got '-1'"),
    ("repro_audit_ignore = graphs", ("ERROR: repro_audit_ignore in pytest.ini: unknown category 'graphs' in ignore "
                                     "(did you mean 'graph'? known: environment, ")),
], ids=["steps", "runs", "atol", "ignore"])
def test_a_bad_ini_value_is_one_error_line(pytester: pytest.Pytester, ini: str, words: str) -> None:
    pytester.makefile(".ini", pytest=f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess(*plugin_args())
    errors = [line for line in result.stderr.lines if line.strip()]
    assert result.ret == pytest.ExitCode.USAGE_ERROR and len(errors) == 1 and errors[0].startswith(words), errors
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_bad_flag_value_is_one_error_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess(*plugin_args(), "--repro-audit-rtol", "nan")
    errors = [line for line in result.stderr.lines if line.strip()]
    assert errors == ["ERROR: --repro-audit-rtol: expected a number >= 0, got 'nan'"], errors

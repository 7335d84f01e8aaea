"""pytest plugin: assert in a test that training runs are identical (registered through `pytest11`).

- fixture `repro_audit`: a `repro_audit.audit.assertions.Auditor` for the test, with `assert_deterministic`,
  `assert_identical`, `assert_recipes_identical` and `assert_matches_golden`;
- marker `repro_deterministic(config=None, *, runs=None, steps=None, ...)`: the test's training is
  deterministic; the config comes from `config=` or is what the test returns;
- settings (audit/pytest_options.py), each an ini option and a flag: `--repro-audit-report DIR` (the HTML
  report of every failing comparison), default steps, runs, tolerances and ignored categories, the golden
  folder, and `--repro-audit-update-golden`.

A failure is one message of at most 12 lines (reports/pytest_message.py) whose first line, the cause, is
also what the short test summary shows. Traces go under pytest's temporary folder (tmp_path_factory), never
into the working directory; a passing assertion removes its traces, a failing one keeps them and says where.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import repro_audit.audit.assertions as assertions_module
from repro_audit import audit as own_audit
from repro_audit import reports as own_reports
from repro_audit.audit.assertions import Auditor, ReproAuditFailure
from repro_audit.audit.errors import UserError
from repro_audit.audit.pytest_options import PluginSettings, add_settings, read_settings

MARKER = "repro_deterministic"
FIXTURE = "repro_audit"
REPORT_PROPERTY = "repro_audit_report"
NOTE_PROPERTY = "repro_audit_note"
MARKER_OPTIONS = ("runs", "steps", "overrides", "rtol", "atol", "ignore")
REPORT_HINT = "HTML report: rerun with --repro-audit-report DIR"

# repro-audit's own packages: their frames are left out of the traceback of a user error.
# Both spellings: in a checkout repro_audit/audit is a link to audit/, and frames carry the path imported.
OWN_FOLDERS = tuple(str(folder) + os.sep for module in (own_audit, own_reports) if module.__file__
                    for folder in {Path(module.__file__).parent, Path(module.__file__).resolve().parent})
ASSERTIONS_FILE = Path(assertions_module.__file__).resolve()

_auditor_key = pytest.StashKey[Auditor]()
_settings_key = pytest.StashKey[PluginSettings]()
_cause_key = pytest.StashKey[str]()  # the first line of a marker's failure, for the short summary


def pytest_addoption(parser: pytest.Parser) -> None:
    add_settings(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(config=None, *, runs=None, steps=None, overrides=(), rtol=None, atol=None, ignore=()): "
        "the test's training is deterministic across `runs` runs; the config is `config=` (relative to the "
        "rootdir) or what the test returns",
    )
    config.stash[_settings_key] = read_settings(config)
    config.pluginmanager.register(SessionSummary(), "repro-audit-summary")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A marked test gets the fixture as if it had asked for it, so the marker and the fixture share one
    # Auditor (and its temporary folder) without the test naming it.
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker(MARKER) is None:
            continue
        if FIXTURE not in item.fixturenames:
            item.fixturenames.append(FIXTURE)


@pytest.fixture
def repro_audit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Auditor:
    """Assert that runs are identical: `repro_audit.assert_deterministic("configs/run.yaml", steps=2)`."""
    node, config = request.node, request.config
    settings = config.stash[_settings_key]
    auditor = Auditor(
        workdir=tmp_path_factory.mktemp(f"repro-audit-{_slug(node.name)[:30]}", numbered=True),
        report_dir=settings.report_dir,
        report_name=report_name(node.nodeid),
        report_hint=None if settings.report_dir else REPORT_HINT,
        base_dir=config.rootpath,
        golden_dir=settings.golden_dir,
        update_golden=settings.update_golden,
        defaults=settings.defaults,
        verbosity=_verbosity(config),
    )
    node.stash[_auditor_key] = auditor
    return auditor


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a marked test, then check that the config it names (or returns) trains deterministically."""
    marker = pyfuncitem.get_closest_marker(MARKER)
    if marker is None:
        return None
    function = pyfuncitem.obj
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function) \
            or inspect.isgeneratorfunction(function):
        pytest.fail(f"@pytest.mark.{MARKER} needs a plain test function (not async, not a generator)",
                    pytrace=False)
    accepted = inspect.signature(function).parameters
    returned = function(**{name: value for name, value in pyfuncitem.funcargs.items() if name in accepted})
    config, options = _marker_arguments(marker, pyfuncitem.nodeid)
    if config is not None and returned is not None:
        pytest.fail(f"@pytest.mark.{MARKER} got config= and the test returned a config too; keep one",
                    pytrace=False)
    if config is None and returned is None:
        pytest.fail(f"@pytest.mark.{MARKER} has no config: give config= or return the config (a path, a "
                    "RunConfig or a mapping) from the test", pytrace=False)
    failure = None
    try:
        pyfuncitem.stash[_auditor_key].assert_deterministic(returned if config is None else config, **options)
    except ReproAuditFailure as exc:
        failure = str(exc)  # its first line names the cause: no type name in front of it
    except (UserError, ValueError, TypeError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if failure is not None:
        # Failed outside the except block, or pytest would print the message twice ("During handling of
        # the above exception..."); no traceback: there is no line of the test to point at.
        pyfuncitem.stash[_cause_key] = failure.splitlines()[0]
        pytest.fail(failure, pytrace=False)
    return True


def _marker_arguments(marker: pytest.Mark, nodeid: str) -> tuple[Any, dict[str, Any]]:
    if len(marker.args) > 1:
        pytest.fail(f"{nodeid}: @pytest.mark.{MARKER} takes one positional argument (config), got "
                    f"{len(marker.args)}", pytrace=False)
    options = dict(marker.kwargs)
    config = options.pop("config", marker.args[0] if marker.args else None)
    unknown = sorted(set(options) - set(MARKER_OPTIONS))
    if unknown:
        pytest.fail(f"{nodeid}: @pytest.mark.{MARKER} has no option {unknown[0]!r} (known: config, "
                    f"{', '.join(MARKER_OPTIONS)})", pytrace=False)
    return config, options


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    if call.excinfo is not None and _is_user_error(call.excinfo) and not item.config.getoption("fulltrace"):
        # A bad config, a failed run, a bad golden path: the test's line and the error's one line, not the
        # frames of repro-audit that found it.
        _cut_at_repro_audit(call.excinfo)
    outcome = yield
    report = outcome.get_result()
    if report.when != "call":
        return
    _summary_names_cause(item, call, report)
    # Report paths and golden notes travel on the report itself, so under pytest-xdist the controller can
    # list them.
    auditor = item.stash.get(_auditor_key, None)
    if auditor is not None:
        report.user_properties += [(REPORT_PROPERTY, str(path)) for path in auditor.reports]
        report.user_properties += [(NOTE_PROPERTY, note) for note in auditor.notes]


def _is_user_error(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """A UserError, or the ValueError/TypeError of an assertion's own argument checks."""
    if isinstance(excinfo.value, UserError):
        return True
    last = excinfo.traceback[-1] if len(excinfo.traceback) else None
    return isinstance(excinfo.value, (ValueError, TypeError)) and last is not None and \
        Path(str(last.path)).resolve() == ASSERTIONS_FILE


def _cut_at_repro_audit(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """End the traceback at the last frame before repro-audit's own (the test's call of the assertion).

    pytest rebuilds the traceback from the raw one when it cuts it at the test function, so the raw chain
    itself is ended there."""
    previous: TracebackType | None = None
    tb: TracebackType | None = excinfo.tb
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(OWN_FOLDERS):
        previous, tb = tb, tb.tb_next
    if previous is not None and tb is not None:
        previous.tb_next = None
        excinfo.traceback = type(excinfo.traceback)(excinfo.tb)


def _summary_names_cause(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """The short test summary (`FAILED test - ...`) and --tb=line show the message's first line, the cause,
    instead of the exception's module path in front of it."""
    error = call.excinfo.value if call.excinfo is not None else None
    cause = str(error).splitlines()[0] if isinstance(error, ReproAuditFailure) and str(error) else None
    cause = item.stash.get(_cause_key, None) or cause
    crash = getattr(report.longrepr, "reprcrash", None)
    if cause and report.failed and crash is not None and hasattr(crash, "message"):
        crash.message = cause


class SessionSummary:
    """Lists, at the end of the session, the HTML reports of failing comparisons and the golden traces
    written, pytest-xdist workers' included."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == REPORT_PROPERTY:
                self.reports.append((report.nodeid, str(value)))
            elif name == NOTE_PROPERTY:
                self.notes.append((report.nodeid, str(value)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for title, lines in (("repro-audit HTML reports", self.reports), ("repro-audit golden traces", self.notes)):
            if lines:
                terminalreporter.write_sep("-", title)
                for nodeid, text in lines:
                    terminalreporter.write_line(f"{nodeid}: {text}")


def _verbosity(config: pytest.Config) -> int:
    """pytest's -v count for assertion messages (the `verbosity_assertions` ini option where pytest has it)."""
    get = getattr(config, "get_verbosity", None)
    kind = getattr(pytest.Config, "VERBOSITY_ASSERTIONS", None)
    return int(get(kind) if get is not None and kind is not None else config.getoption("verbose") or 0)


def report_name(nodeid: str) -> str:
    """A file name from a test's node id: readable, safe on every file system, unique per test."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("._") or "test"
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha1(nodeid.encode()).hexdigest()[:10]}"
    return name


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "test"

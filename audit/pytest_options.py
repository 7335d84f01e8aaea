"""The plugin's settings: each is an ini option (pytest.ini, pyproject.toml, tox.ini, setup.cfg) and a flag.

They are declared in one table, so no setting exists in one place only, and read once, at start-up: the
command-line flag wins over the ini option, a bad value stops the session with one `ERROR:` line naming
where it came from, before any run starts. Steps, runs and tolerances are defaults for assertions that do
not set them; ignored categories are added to each assertion's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.assertions import AssertionDefaults, ignored_categories


@dataclass(frozen=True)
class Setting:
    """One setting: its ini name, its flag, what kind of value it takes and what it is for."""

    ini: str
    flag: str
    kind: str  # "dir", "int", "runs", "tolerance", "categories" or "switch" (a flag without an ini option)
    metavar: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("repro_audit_report_dir", "--repro-audit-report", "dir", "DIR",
            "write the HTML report of every failing repro-audit comparison into DIR"),
    Setting("repro_audit_steps", "--repro-audit-steps", "int", "N",
            "steps of each run, for assertions that do not set steps="),
    Setting("repro_audit_runs", "--repro-audit-runs", "runs", "N",
            "runs of assert_deterministic and the marker that do not set runs= (at least 2; default 2)"),
    Setting("repro_audit_rtol", "--repro-audit-rtol", "tolerance", "RTOL",
            "relative tolerance of assertions that do not set rtol= (default 0: bitwise)"),
    Setting("repro_audit_atol", "--repro-audit-atol", "tolerance", "ATOL",
            "absolute tolerance of assertions that do not set atol= (default 0: bitwise)"),
    Setting("repro_audit_ignore", "--repro-audit-ignore", "categories", "CATEGORY",
            "categories left out of every comparison, besides the assertion's own ignore= (repeatable)"),
    Setting("repro_audit_golden_dir", "--repro-audit-golden-dir", "dir", "DIR",
            "folder that relative golden= paths start from (default: the rootdir)"),
    Setting("repro_audit_update_golden", "--repro-audit-update-golden", "switch", "",
            "record golden traces again instead of comparing with them (each test passes with a note)"),
)


@dataclass(frozen=True)
class PluginSettings:
    """What the fixture's Auditor is built from."""

    report_dir: Path | None = None
    golden_dir: Path | None = None
    update_golden: bool = False
    defaults: AssertionDefaults = field(default_factory=AssertionDefaults)


def add_settings(parser: pytest.Parser) -> None:
    group = parser.getgroup("repro-audit", "repro-audit: assert that training runs are identical")
    for setting in SETTINGS:
        dest = setting.ini
        if setting.kind == "switch":
            group.addoption(setting.flag, dest=dest, action="store_true", default=False, help=setting.help)
            continue
        action = "append" if setting.kind == "categories" else "store"
        group.addoption(setting.flag, dest=dest, metavar=setting.metavar, action=action, default=None,
                        help=f"{setting.help} (ini: {setting.ini})")
        if setting.kind == "categories":  # a list in pyproject.toml, words in an ini file
            parser.addini(setting.ini, f"repro-audit: {setting.help}", type="args")
        else:
            parser.addini(setting.ini, f"repro-audit: {setting.help}", type="string")


def read_settings(config: pytest.Config) -> PluginSettings:
    """The settings of this session, flags over ini options; pytest.UsageError for a bad value."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw, source, base = _raw(config, setting)
        if raw is None:
            continue
        try:
            values[setting.ini] = _parse(setting, raw, base)
        except ValueError as exc:
            raise pytest.UsageError(f"{source}: {exc}") from None
    defaults = AssertionDefaults(steps=values.get("repro_audit_steps"), runs=values.get("repro_audit_runs", 2),
                                 rtol=values.get("repro_audit_rtol", 0.0), atol=values.get("repro_audit_atol", 0.0),
                                 ignore=values.get("repro_audit_ignore", ()))
    return PluginSettings(report_dir=values.get("repro_audit_report_dir"),
                          golden_dir=values.get("repro_audit_golden_dir"),
                          update_golden=bool(values.get("repro_audit_update_golden")), defaults=defaults)


def _raw(config: pytest.Config, setting: Setting) -> tuple[Any, str, Path]:
    """The value as given, where it came from, and the folder a relative path in it starts from."""
    flag = config.getoption(setting.ini)
    if setting.kind == "switch":
        return (True if flag else None), setting.flag, config.invocation_params.dir
    if flag not in (None, []):
        return flag, setting.flag, config.invocation_params.dir
    where = config.inipath.name if config.inipath else "the ini file"
    try:
        ini = config.getini(setting.ini)
    except (TypeError, ValueError) as exc:  # a [tool.pytest] value of another TOML type
        raise pytest.UsageError(f"{setting.ini} in {where}: {exc}") from None
    if ini in ("", [], None):
        return None, "", config.rootpath
    base = config.inipath.parent if config.inipath else config.rootpath
    return ini, f"{setting.ini} in {where}", base


def _parse(setting: Setting, raw: Any, base: Path) -> Any:
    """A checked value; ValueError with what was expected."""
    if setting.kind == "switch":
        return bool(raw)
    if setting.kind == "categories":
        names = [name for item in raw for name in str(item).replace(",", " ").split()]
        return ignored_categories(names)
    text = str(raw).strip()
    if setting.kind == "dir":
        if not text:
            raise ValueError("expected a folder, got nothing")
        return base / Path(text).expanduser()
    if setting.kind in ("int", "runs"):
        least = 2 if setting.kind == "runs" else 1
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number < least or text != str(number):
            raise ValueError(f"expected a whole number >= {least}, got {text!r}")
        return number
    try:
        tolerance = float(text)
    except ValueError:
        tolerance = math.nan
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return tolerance

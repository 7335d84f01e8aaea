"""The HTML report of real runs: `repro-audit diff baseline zero_entropy_loss --html` opened in Chromium."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from audit.cli import cli

TORCH = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch"


def _sibling(name: str) -> ModuleType:
    key = f"_repro_audit_tests_reports_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


browser = _sibling("browser")
pytestmark = [pytest.mark.browser, browser.requires_chromium]


def test_report_of_baseline_against_zero_entropy_loss(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["diff", str(TORCH / "baseline.yaml"), str(TORCH / "zero_entropy_loss.yaml"),
                                      "--steps", "2", "-q", "--html", str(report)])
    assert result.exit_code == 1, result.output
    with browser.open_report(report) as opened:
        page = opened.page
        assert opened.console_errors == [] and opened.page_errors == []
        assert opened.requests == [opened.url], "the report fetches nothing but itself"
        assert opened.in_viewport("#first-divergence")
        assert opened.in_viewport(page.locator("#first-divergence").get_by_text("The configs differ in 3 keys",
                                                                                exact=False))
        nan = page.locator("#verdict").get_by_text("Loss term att_entropy_l0 with weight 0.0 sends NaN/Inf",
                                                   exact=False)
        assert opened.in_viewport(nan), "the NaN explanation is on the first screen"
        page.fill("input[data-filter='init-table']", "att_loss.head_gate")
        assert opened.shown_rows("init-table") == 4
        page.screenshot(path=str(tmp_path / "report.png"))
        assert opened.dialogs == []
    assert (tmp_path / "report.png").stat().st_size > 10_000

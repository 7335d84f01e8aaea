"""The HTML report in real headless Chromium: nothing fetched, nothing executed that should not be,
the first divergence on the first screen, filters that work, and a 1,000-parameter report that stays
small and loads fast."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli


def _sibling(name: str) -> ModuleType:
    """Import a helper beside this file by path: tests run with --import-mode=importlib."""
    key = f"_repro_audit_tests_reports_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


CONFIGS = Path(__file__).resolve().parents[2] / "fixtures" / "configs"
TORCH = CONFIGS / "torch"
browser = _sibling("browser")
cases = _sibling("test_html")

pytestmark = [pytest.mark.browser, browser.requires_chromium]


def write_report(case: dict[str, Any], path: Path) -> Path:
    from repro_audit.reports.html import write_html

    return write_html(path, case["comparison"], trace_a=case["trace_a"], trace_b=case["trace_b"],
                      check=case["check"])


def test_report_in_chromium(tmp_path: Path) -> None:
    report = write_report(cases.build_case(tmp_path), tmp_path / "report.html")
    with browser.open_report(report) as opened:
        page = opened.page
        assert opened.console_errors == [] and opened.page_errors == []
        assert opened.requests == [opened.url], "the report fetches nothing but itself"
        # Above the fold: the first divergence with its explanation, and the NaN cause's explanation.
        assert opened.in_viewport("#first-divergence")
        assert opened.in_viewport(page.get_by_text(cases.CONFIG_EXPLANATION, exact=True))
        assert opened.in_viewport(page.locator("#verdict").get_by_text(cases.NAN_EXPLANATION, exact=True))
        page.screenshot(path=str(tmp_path / "report.png"))

        # Long sections are folded; a link to one unfolds it. Name filters hide rows that do not match, and
        # open the collapsed table they filter.
        assert not page.locator("#init-table").is_visible() and not page.locator("#gradient-table").is_visible()
        page.click("nav a[href='#initialisation']")
        page.click("nav a[href='#gradients']")
        # Hostile names are text: shown literally, never run, never handlers.
        assert page.locator("#gradient-table td.name", has_text=cases.EVIL_PARAM).count() == 1
        page.locator("#gradient-table td.name", has_text=cases.EVIL_ATTR).hover()
        assert page.locator("img").count() == 0
        assert opened.shown_rows("init-table") == len(cases.parameter_names(None))
        page.fill("input[data-filter='init-table']", "decoder.out")
        assert opened.shown_rows("init-table") == 2
        assert page.locator("#init-table").is_visible()
        page.fill("input[data-filter='gradient-table']", "attn")
        assert opened.shown_rows("gradient-table") == 3
        page.select_option("#gradient-step", str(cases.NAN_STEP))
        assert opened.shown_rows("gradient-table") == 3, "the filter survives a change of step"
        # Run B: norm, max|g| and mean are NaN and the NaN count is non-zero, in each of the 3 rows shown.
        assert page.locator("#gradient-table tr:not([hidden]) td.hot").count() == 3 * 4
        page.click("#tree-fold > summary")
        page.fill("input[data-filter='tree']", "decoder.out.bias")
        assert page.locator("#tree > .node:visible").count() == 2  # the shifted tensor's node and the NaN node

        # A timeline cell leads to its divergence, unfolding the tree down to it.
        page.fill("input[data-filter='tree']", "")
        page.locator("table.timeline tr", has=page.locator("th", has_text="gradients")).locator("td.hit a").nth(1).click()
        assert page.url.endswith("#d3-0") and page.locator("#d3-0").is_visible()
        assert opened.dialogs == [], "no script from a name ever ran"
        assert opened.console_errors == [] and opened.page_errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.slow
def test_thousand_parameters_stay_small_and_usable(tmp_path: Path) -> None:
    """Size and usability; the load time is measured in benchmarks/bench_html_report.py, not asserted here."""
    report = write_report(cases.build_case(tmp_path, parameters=1000, steps=20), tmp_path / "big.html")
    assert report.stat().st_size < 5_000_000
    with browser.open_report(report) as opened:
        assert opened.console_errors == [] and opened.page_errors == [] and opened.requests == [opened.url]
        assert opened.in_viewport("#first-divergence")
        opened.page.click("nav a[href='#gradients']")
        assert opened.shown_rows("gradient-table") == 1000
        opened.page.fill("input[data-filter='gradient-table']", "ffn.w0.")
        assert opened.shown_rows("gradient-table") == 250


@pytest.fixture(scope="session", params=["torch", pytest.param("tf", marks=pytest.mark.tensorflow)])
def real_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """`repro-audit compare baseline zero_entropy_loss --html` on real runs of either framework: the three-step
    runs tests/audit/test_diff_causes.py and test_diff_tf.py record too (tests/shared_runs.py)."""
    from repro_audit.audit.config import load_config
    from tests.shared_runs import shared_traces

    framework = request.param
    if framework == "tf":
        pytest.importorskip("tensorflow")
    configs = CONFIGS / framework
    values = "first" if framework == "torch" else None  # as the torch cause tests record them
    traces = shared_traces(tmp_path_factory, {
        name: (load_config(configs / f"{name}.yaml", steps=3, values=values), 0)
        for name in ("baseline", "zero_entropy_loss")})
    report = tmp_path_factory.mktemp(f"real-{framework}") / "report.html"
    result = CliRunner().invoke(cli, ["compare", str(traces["baseline"].path), str(traces["zero_entropy_loss"].path),
                                      "-q", "--html", str(report)])
    assert result.exit_code == 1, result.output
    REAL_TRACES[report] = (traces["baseline"], traces["zero_entropy_loss"])
    return framework, report


REAL_TRACES: dict[Path, tuple[Any, Any]] = {}  # report -> the traces (A, B) it compares


@pytest.fixture(scope="session")
def proven_report(real_report: tuple[str, Path]) -> Path:
    """The torch report again, with a `--verify` table built from the traces recorded above instead of nine
    more runs: its rows are real Effects (audit/verify/effect.py) measured on real traces: run B as recorded,
    each planned intervention standing in with run B as recorded, and run A against itself as "all of them
    together" (so the changed graph is confirmed); plan() gives the labels and what it cannot test."""
    from repro_audit.audit.diff import compare_traces
    from repro_audit.audit.verify.effect import measure
    from repro_audit.audit.verify.plan import plan
    from repro_audit.audit.verify.result import Row, Verification
    from repro_audit.audit.verify.run import _confirm_graph_change
    from repro_audit.reports.html import write_html

    _, report = real_report
    trace_a, trace_b = REAL_TRACES[report]
    comparison = compare_traces(trace_a, trace_b)
    interventions, untested = plan(comparison, trace_a)
    as_recorded, matching = measure(trace_a, trace_b), measure(trace_a, trace_a)
    rows = [Row("none (run B as recorded)", "none", [], as_recorded)]
    rows += [Row(intervention.label, "single", [intervention.cause], as_recorded) for intervention in interventions]
    rows += [Row("all of them together", "all", [intervention.cause for intervention in interventions], matching)]
    comparison.verification = Verification(rows=rows, untested=untested)
    _confirm_graph_change(comparison.verification)
    return write_html(report.parent / "proven.html", comparison, trace_a=trace_a, trace_b=trace_b)


def test_first_screen_of_real_runs_is_the_verdict_its_mechanisms_and_the_distance_chart(
        real_report: tuple[str, Path], tmp_path: Path) -> None:
    """At 1400x900: the chain, every mechanism with its sentence, and the divergence-over-steps chart, all
    on the first screen; the page under six screens with its sections folded; nothing fetched."""
    framework, report = real_report
    with browser.open_report(report, viewport=browser.FIRST_SCREEN) as opened:
        page = opened.page
        assert opened.console_errors == [] and opened.page_errors == []
        assert opened.requests == [opened.url], "the report fetches nothing but itself"
        assert page.title().startswith("DIVERGED: baseline vs zero_entropy_loss: the config (3 keys) -> NaN through "
                                       "a zero-weighted loss term; ")
        assert opened.in_viewport("#verdict .headline")
        assert page.locator("#why li.mechanism").count() >= 3 and opened.in_viewport("#why")
        nan = page.locator("#why").get_by_text("Loss term att_entropy_l0 with weight 0.0 sends NaN/Inf", exact=False)
        assert opened.in_viewport(nan), "the NaN explanation is on the first screen"
        assert opened.in_viewport("#divergence-over-steps svg")
        assert page.locator("#divergence-over-steps svg title").count() >= 4, "hover values on the points"
        assert opened.smallest_chart_font("#divergence-over-steps") >= 12
        assert opened.smallest_chart_font("#charts") >= 12
        page.screenshot(path=str(tmp_path / "first-screen.png"))
        height = opened.page_height()
        assert height < 6 * browser.FIRST_SCREEN["height"], f"{framework}: the page is {height} px, sections folded"
        assert page.locator("#first-module").is_visible(), "the per-module table marks the first differing output"
    assert (tmp_path / "first-screen.png").stat().st_size > 10_000


def test_real_report_at_800_px_breaks_no_word(real_report: tuple[str, Path]) -> None:
    """Names wrap after their dots and values where they must, never in the middle of a word: folded, and
    with every section and table unfolded."""
    _, report = real_report
    with browser.open_report(report, viewport={"width": 800, "height": 900}) as opened:
        assert opened.words_broken_across_lines() == []
        opened.page.evaluate("document.querySelectorAll('details').forEach(details => { details.open = true; })")
        assert opened.words_broken_across_lines() == []


def test_report_of_real_runs_baseline_against_zero_entropy_loss(real_report: tuple[str, Path], tmp_path: Path) -> None:
    """Filters and folded sections on the real report of either framework."""
    framework, report = real_report
    with browser.open_report(report) as opened:
        page = opened.page
        assert opened.console_errors == [] and opened.page_errors == []
        # torch: the head gate's weight and bias, at both layers; TF (whose gate is never built): the 11
        # tensors of a layer created after the gate, shifted by the Keras seed the gate drew.
        name, rows = {"torch": ("att_loss.head_gate", 4), "tf": ("decoder.layers.1.self_attn", 11)}[framework]
        page.click("nav a[href='#initialisation']")
        page.fill("input[data-filter='init-table']", name)
        assert opened.shown_rows("init-table") == rows
        page.fill("input[data-filter='modules-table']", "dropout")
        assert 0 < opened.shown_rows("modules-table") < page.locator("#modules-table tbody tr").count()
        page.screenshot(path=str(tmp_path / "report.png"))
        assert opened.dialogs == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize("real_report", ["torch"], indirect=True)  # one framework is enough for the layout
def test_proof_table_renders_right_under_the_mechanisms(proven_report: Path) -> None:
    """`--verify`'s table: one row per intervention with its effect, what remains, under the mechanisms; the
    verdict, the mechanisms and the chart keep the first screen; the page stays under six screens; at 800 px
    no word of it breaks."""
    with browser.open_report(proven_report, viewport=browser.FIRST_SCREEN) as opened:
        page = opened.page
        assert opened.console_errors == [] and opened.page_errors == [] and opened.requests == [opened.url]
        rows = page.locator("#verification tbody tr")
        mechanisms = page.locator("#why li.mechanism").count()
        assert rows.count() == 1 + (mechanisms - 1) + 2, "as recorded, one per intervention, all together, the graph"
        together = rows.filter(has_text="all of them together")
        assert together.locator("td.effect").inner_text().startswith("✓ run B matches run A on every shared number")
        assert together.locator("td.causes a").count() == mechanisms - 1, "it names every mechanism it neutralises"
        assert "What remains after every intervention together: nothing" in page.locator("#verification").inner_text()
        assert opened.in_viewport("#verdict .headline") and opened.in_viewport("#why")
        assert opened.in_viewport("#divergence-over-steps svg")
        below = page.locator("#verification").bounding_box()
        assert below and below["y"] > page.locator("#why").bounding_box()["y"]
        assert opened.page_height() < 6 * browser.FIRST_SCREEN["height"]
        page.set_viewport_size({"width": 800, "height": 900})
        assert opened.words_broken_across_lines() == []

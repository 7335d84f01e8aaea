"""Training health in the reports, on real tiny torch runs: the health page (`repro-audit health --html`),
and both runs' health in `diff`/`compare` as JSON, text and the HTML divergence report.

Three recordings in all (module fixtures): `diff healthy_mlp dead_relu` (two runs side by side) and
`health` of a dead-ReLU network whose layers have hostile names. Every other check re-reads those traces.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli
from repro_audit.audit.diff import compare_traces
from repro_audit.audit.divergence import Comparison, RunInfo
from repro_audit.audit.health import check_trace
from repro_audit.audit.trace import Trace
from repro_audit.reports.html import render_html
from repro_audit.reports.html.health_page import render_health_html
from repro_audit.reports.json_report import comparison_from_json, render_json
from repro_audit.reports.text import render_text

HEALTH = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch" / "health"
EVIL_LAYER = "<script>alert(1)</script>"
EVIL_RELU = "<img src=x onerror=alert(2)>"
HOSTILE_RECIPE = f'''
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from repro_audit import Recipe


def build(params):
    """A ReLU network whose first layer's bias starts at -10, with names a report must not run."""
    model = nn.Sequential(OrderedDict([({EVIL_LAYER!r}, nn.Linear(8, 16)), ({EVIL_RELU!r}, nn.ReLU()),
                                       ("out", nn.Linear(16, 4))]))
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator))
               for _ in range(4)]

    def loss(model, batch):
        x, y = batch
        return {{"ce": F.cross_entropy(model(x), y)}}

    return Recipe(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), batches=batches, loss=loss)
'''


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


browser = _sibling("browser")


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    return result.exit_code, result.output


def section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}"[^>]*>(.*?)</section>', html, re.DOTALL)
    assert match, f"section {section_id} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def diffed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`repro-audit diff healthy_mlp dead_relu --steps 3` with --json, --html and --keep."""
    folder = tmp_path_factory.mktemp("diffed")
    code, output = invoke("diff", HEALTH / "healthy_mlp.yaml", HEALTH / "dead_relu.yaml", "--steps", "3", "-q",
                          "--keep", folder / "runs", "--json", folder / "c.json", "--html", folder / "c.html")
    traces = sorted((folder / "runs").glob("*.trace"))
    return {"code": code, "output": output, "json": json.loads((folder / "c.json").read_text(encoding="utf-8")),
            "html": (folder / "c.html").read_text(encoding="utf-8"),
            "healthy": Trace(traces[0]), "dead": Trace(traces[1]), "folder": folder}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`repro-audit health hostile.yaml --html` on a real run whose layers have hostile names."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "hostile_recipe.py").write_text(HOSTILE_RECIPE, encoding="utf-8")
    (folder / "hostile.yaml").write_text("recipe: hostile_recipe:build\nframework: torch\nseed: 0\nsteps: 2\n",
                                         encoding="utf-8")
    code, output = invoke("health", folder / "hostile.yaml", "-q", "--keep", folder / "kept",
                          "--html", folder / "health.html")
    return {"code": code, "output": output, "page": folder / "health.html",
            "trace": Trace(folder / "kept" / "hostile.trace"), "folder": folder}


# -- the health page ----------------------------------------------------------------------------------------


def test_health_html_of_a_config_shows_verdict_findings_and_charts(hostile: dict[str, Any]) -> None:
    assert hostile["code"] == 1, hostile["output"]
    assert f"HTML report: {hostile['page']}" not in hostile["output"], "-q prints no path"
    html = hostile["page"].read_text(encoding="utf-8")
    assert "Verdict: 2 anomalies flagged" in section(html, "verdict")
    rows = re.findall(r"<tr data-name=[^>]*>(.*?)</tr>", section(html, "anomalies"), re.DOTALL)
    assert len(rows) == 2
    assert "vanishing gradients" in rows[0] and "every gradient is exactly 0" in rows[0]
    assert "dead units" in rows[1] and ">100%<" in rows[1] and ">25%<" in rows[1] and "16 of 16 units" in rows[1]
    assert re.search(r'<td class="num">1</td>', rows[1]), "the step it was first seen"
    for chart in ("gradient-flow", "activations", "memory"):
        assert section(html, chart).count("<svg") == 1, chart
    assert "exactly 0 (▼ on the step axis)" in section(html, "gradient-flow")
    assert "--dead-units" in section(html, "thresholds")


def test_health_page_is_self_contained_and_escapes_every_name(hostile: dict[str, Any]) -> None:
    html = hostile["page"].read_text(encoding="utf-8")
    assert EVIL_LAYER not in html and EVIL_RELU not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, "in the table and in the SVG legends, as text"
    assert html.count("&lt;img src=x onerror=alert(2)&gt;") >= 2
    assert len(re.findall(r"<script\b", html)) == 1 and "<img" not in html
    assert "default-src 'none'" in html and "script-src 'sha256-" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html) and "<?xml" not in html
    assert not re.search(r"<(link|iframe|object|embed)\b", html)


def test_health_page_of_a_trace_folder_is_deterministic(diffed: dict[str, Any], tmp_path: Path) -> None:
    trace = diffed["dead"].path
    assert invoke("health", trace, "--html", tmp_path / "one.html")[0] == 1
    assert invoke("health", trace, "--html", tmp_path / "two.html")[0] == 1
    first = (tmp_path / "one.html").read_bytes()
    assert first == (tmp_path / "two.html").read_bytes()
    assert not re.search(rb"20\d\d-\d\d-\d\d", first), "no dates in the page"
    healthy = render_health_html(check_trace(diffed["healthy"]), trace=diffed["healthy"])
    assert "Verdict: healthy" in healthy and "No anomaly crossed its threshold." in healthy
    assert "Healthy covers only what could be checked." in healthy and "memory growth: needs 5 steps" in healthy


def test_health_page_without_a_trace_says_so(hostile: dict[str, Any]) -> None:
    html = render_health_html(check_trace(hostile["trace"]))
    assert html.count("No trace given: no charts.") == 3 and "<svg" not in html
    assert "Verdict: 2 anomalies flagged" in html


@pytest.mark.browser
@browser.requires_chromium
def test_health_page_in_chromium(hostile: dict[str, Any]) -> None:
    with browser.open_report(hostile["page"]) as opened:
        page = opened.page
        assert opened.console_errors == [] and opened.page_errors == []
        assert opened.requests == [opened.url], "the page fetches nothing but itself"
        assert opened.in_viewport(page.locator("#verdict h2"))
        assert page.locator("#anomalies td.name", has_text=EVIL_LAYER).count() == 1
        assert page.locator("svg").count() == 3 and page.locator("img").count() == 0
        page.locator("#anomalies td.name", has_text=EVIL_RELU).hover()
        assert opened.dialogs == []


# -- both runs' health in diff and compare ------------------------------------------------------------------


def test_diff_json_carries_both_runs_health(diffed: dict[str, Any]) -> None:
    assert diffed["code"] == 1, diffed["output"]
    health = diffed["json"]["health"]
    assert health["a"]["label"] == "healthy_mlp" and health["a"]["healthy"] is True and health["a"]["findings"] == []
    assert health["b"]["healthy"] is False and health["b"]["steps"] == 3
    assert [(f["rule"], f["layer"], f["step"]) for f in health["b"]["findings"]] == [
        ("vanishing_gradients", "0", 1), ("dead_units", "1", 1), ("dead_units", "3", 1)]
    assert health["b"]["thresholds"]["dead_units"] == 0.25


def test_health_reads_back_from_json_and_can_be_left_out(diffed: dict[str, Any]) -> None:
    comparison = compare_traces(diffed["healthy"], diffed["dead"])
    assert comparison.health == {"a": check_trace(diffed["healthy"]).as_dict(),
                                 "b": check_trace(diffed["dead"]).as_dict()}
    text = render_json(comparison)
    assert comparison_from_json(text).health == comparison.health and render_json(comparison_from_json(text)) == text
    left_out = compare_traces(diffed["healthy"], diffed["dead"], ignore=("health",))
    assert left_out.health is None and "health" not in json.loads(render_json(left_out))


def test_diff_text_has_a_health_block(diffed: dict[str, Any]) -> None:
    lines = diffed["output"].splitlines()
    start = lines.index("Health:")
    entries: list[str] = []  # one per run: a long one is wrapped to the report's 100 columns
    for line in lines[start + 1:]:
        if not line:
            break
        assert len(line) <= 100
        if line.startswith("    "):
            entries[-1] += " " + line.strip()
        else:
            entries.append(line)
    assert entries == [
        "  run A (healthy_mlp): healthy (3 steps; not checked: memory growth)",
        ("  run B (dead_relu): 3 anomalies: vanishing gradients at 0 (step 1); dead units at 1 (step 1); "
         "dead units at 3 (step 1)"),
    ]


def test_divergence_report_shows_both_runs_health_side_by_side(diffed: dict[str, Any]) -> None:
    html = diffed["html"]
    health = section(html, "health")
    side_a, side_b = health.split('<div class="side side-2">')
    assert "A · healthy_mlp" in side_a and "Healthy over 3 steps" in side_a and "<table" not in side_a
    assert "B · dead_relu" in side_b and "3 anomalies flagged over 3 steps" in side_b
    assert side_b.count('<tr data-name="') == 3 and "64 of 64 units (100%)" in side_b
    assert '<a href="#health">health</a>' in html
    assert section(html, "charts").count("<svg") == 2, "the gradient-flow chart of both runs stays"


def test_compare_escapes_hostile_layer_names(diffed: dict[str, Any], hostile: dict[str, Any]) -> None:
    report = hostile["folder"] / "compare.html"
    code, output = invoke("compare", diffed["healthy"].path, hostile["trace"].path, "-q", "--html", report)
    assert code == 1, output
    assert f"run B (hostile): 2 anomalies: vanishing gradients at {EVIL_LAYER} (step 1); dead units at {EVIL_RELU}" \
        in " ".join(line.strip() for line in output.splitlines())  # the line is wrapped to 100 columns
    health = section(report.read_text(encoding="utf-8"), "health")
    assert EVIL_LAYER not in health and "&lt;script&gt;alert(1)&lt;/script&gt;" in health
    assert "<script" not in health and "<img" not in health


def test_health_not_recorded_or_absent_is_said() -> None:
    healthy = {"label": "a", "steps": 2, "healthy": True, "findings": [], "not_checked": [], "thresholds": {}}
    comparison = Comparison(run_a=RunInfo("a", "a.trace", "torch", True, 2),
                            run_b=RunInfo("b", "b.trace", "tensorflow", True, 2), health={"a": healthy, "b": None})
    assert render_text(comparison).splitlines()[-3:] == ["Health:", "  run A (a): healthy (2 steps)",
                                                          "  run B (b): not recorded"]
    health = section(render_html(comparison), "health")
    assert "Healthy over 2 steps" in health and "Not recorded: this trace has no health statistics" in health
    comparison.health = None
    assert "Health:" not in render_text(comparison)
    assert "Neither trace recorded health statistics" in section(render_html(comparison), "health")


def test_memory_read_at_some_steps_is_one_line_through_its_readings() -> None:
    """TF reads the heap at steps 1-8, then every 8th (probes/tf/health.py): the chart joins the readings
    instead of leaving lone points after step 8; a line of values at every step is drawn as before."""
    from repro_audit.reports.html.charts import LINE_COLORS, SeriesPanel, series_chart

    steps = list(range(1, 25))
    heap = [100.0 + step if step <= 8 or step % 8 == 0 else float("nan") for step in steps]
    rss = [500.0 + step for step in steps]

    def heap_line(joined: bool) -> str:
        svg = series_chart([SeriesPanel(title="memory per step", ylabel="MiB", steps=steps,
                                        lines=[("CPU heap in use", heap), ("process RSS", rss)], joined=joined)],
                           salt="memory")
        paths = re.findall(rf'<path d="([^"]*)"[^>]*style="fill: none; stroke: {LINE_COLORS[0]}', svg)
        return max(paths, key=len)  # the data line, not the legend's short sample of it

    joined = heap_line(True)
    assert joined.count("M") == 1 and joined.count("L") == 9  # 10 readings (1-8, 16, 24), one stroke
    broken = heap_line(False)
    assert broken.count("M") > 1  # NaN breaks the line: what a value that is not a reading should do

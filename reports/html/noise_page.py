"""The HTML page of `noise` and `diff --seeds`: the verdict in words, the band charts, one table per metric.

Lays out what audit/noise decided; draws the bands with the report's chart module (matplotlib, inline SVG).
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from repro_audit.audit.noise import NoiseResult
from repro_audit.audit.noise.series import metric_title
from repro_audit.audit.noise.stats import TEST_NAME, p_text
from repro_audit.reports.html.charts import BandPanel, band_chart
from repro_audit.reports.html.page import environment, page_assets

MAX_PANELS = 8  # metrics charted; the tables list every one


def render_noise_html(result: NoiseResult) -> str:
    return environment().get_template("noise.html.j2").render(**page_assets(), **noise_context(result))


def noise_context(result: NoiseResult) -> dict[str, Any]:
    labels = [f"A · {result.a.label}"] + ([f"B · {result.b.label}"] if result.b is not None else [])
    metrics = [band.metric for band in result.a.bands]
    panels = [_panel(result, metric) for metric in metrics[:MAX_PANELS]]
    return {
        "labels": labels,
        "seeds": result.a.seeds,
        "vary": result.a.vary,
        "compared": result.b is not None,
        "outside": result.outside,
        "headline": result.headline(),
        "verdicts": [result.verdict(metric) for metric in metrics] if result.b is not None else [],
        "test": TEST_NAME if result.b is not None else None,
        "alpha": result.alpha,
        "chart": Markup(band_chart(panels, labels)) if panels else None,
        "charted_cut": max(0, len(metrics) - MAX_PANELS),
        "tables": [_table(result, metric) for metric in metrics],
        "runs": [run for side in (result.a, result.b) if side is not None for run in side.runs],
        "notes": result.notes,
    }


def _panel(result: NoiseResult, metric: str) -> BandPanel:
    band = result.a.band(metric)
    assert band is not None
    panel = BandPanel(title=metric_title(metric), steps=band.steps, a=(band.median, band.low, band.high))
    other = result.b.band(metric) if result.b is not None else None
    if other is not None:
        panel.b = (other.steps, other.median, other.low, other.high)
        curve = result.curve(metric)
        panel.outside = curve.outside_steps if curve is not None else []
    return panel


def _table(result: NoiseResult, metric: str) -> dict[str, Any]:
    band = result.a.band(metric)
    assert band is not None
    curve = result.curve(metric)
    tests = {test.step: test for test in curve.steps} if curve is not None else {}
    rows = []
    for index, step in enumerate(band.steps):
        test = tests.get(step)
        rows.append({"step": step, "median": f"{band.median[index]:.6g}",
                     "range": f"{band.low[index]:.6g} to {band.high[index]:.6g}", "runs": band.runs[index],
                     "median_b": f"{test.median_b:.6g}" if test else "",
                     "p": p_text(test.p_adjusted) if test else "",
                     "d": ("n/a" if test.effect_size is None else f"{test.effect_size:.3g}") if test else "",
                     "outside": bool(test and test.outside)})
    return {"title": metric_title(metric), "rows": rows}

"""The text report of `noise` and `diff --seeds`: the verdict in words, then one table per metric.

Only walks the NoiseResult; every number and sentence was decided in audit/noise.
"""

from __future__ import annotations

from repro_audit.audit.noise import NoiseResult
from repro_audit.audit.noise.series import metric_title
from repro_audit.audit.noise.stats import TEST_NAME, p_text

MAX_METRICS = 8  # tables shown; the JSON has every one
MAX_ROWS = 20  # steps per table: the first and last ones


def render_noise_text(result: NoiseResult) -> str:
    a, b = result.a, result.b
    metrics = [band.metric for band in a.bands]
    if b is None:
        lines = [f"NOISE: {a.label}, {a.seeds} seeds (vary {a.vary})", f"  {result.verdict()}"]
    else:
        head = "OUTSIDE" if result.outside else "WITHIN"
        lines = [f"{head}: {result.headline()}",
                 f"  A = {a.label}, B = {b.label}: {a.seeds} seeds each (vary {a.vary})",
                 f"  test: {TEST_NAME}; alpha = {result.alpha:g}"]
        lines += [f"  {result.verdict(metric)}" for metric in metrics]
    for metric in metrics[:MAX_METRICS]:
        lines += ["", *_table(result, metric)]
    if len(metrics) > MAX_METRICS:
        lines += ["", f"({len(metrics) - MAX_METRICS} more metrics in --json)"]
    if result.notes:
        lines += ["", "Notes:", *(f"  {note}" for note in result.notes)]
    return "\n".join(lines)


def _table(result: NoiseResult, metric: str) -> list[str]:
    band = result.a.band(metric)
    if band is None:
        return []
    curve = result.curve(metric)
    tests = {test.step: test for test in curve.steps} if curve is not None else {}
    title = metric_title(metric)
    side_b = result.b is not None
    header = f"  {'step':>5}  {'A median':>11}  {'A range':>25}"
    if side_b:
        header += f"  {'B median':>11}  {'adj. p':>8}  {'d':>7}  outside"
    runs = max(band.runs)
    lines = [f"{title} (A: {runs} run{'s' if runs != 1 else ''} a step)", header]
    rows = list(range(len(band.steps)))
    if len(rows) > MAX_ROWS:
        rows = rows[:MAX_ROWS // 2] + [-1] + rows[-MAX_ROWS // 2:]
    for index in rows:
        if index < 0:
            lines.append(f"  {'...':>5}  ({len(band.steps) - MAX_ROWS} steps not shown)")
            continue
        step = band.steps[index]
        row = f"  {step:>5}  {band.median[index]:>11.6g}  {band.low[index]:>11.6g} .. {band.high[index]:>11.6g}"
        test = tests.get(step)
        if side_b and test is not None:
            effect = "n/a" if test.effect_size is None else f"{test.effect_size:.3g}"
            row += f"  {test.median_b:>11.6g}  {p_text(test.p_adjusted):>8}  {effect:>7}  {'yes' if test.outside else ''}"
        lines.append(row)
    return lines

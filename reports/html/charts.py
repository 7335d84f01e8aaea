"""Charts as inline SVG drawn by matplotlib: loss terms over steps, gradient flow, NaN map, health series.

Deterministic output: the Agg canvas, no pyplot state, a fixed `svg.hashsalt` per chart (so ids of two
inline SVGs never clash), text kept as text, and no date in the metadata. matplotlib is imported here,
lazily, so importing the report package stays cheap.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_audit.reports.html.svg_titles import add_titles

MAX_LOSS_PANELS = 12
MAX_LABELLED_ROWS = 40  # parameter names written on an axis; beyond this the axis shows positions
COLORS = ("#1f5fa8", "#d9480f")  # run A, run B
NAN_COLOR = "#b00020"
# Lines of one panel of a series chart: ten colours, then the same colours dashed, then dotted.
LINE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")
LINE_STYLES = ("-", "--", ":")

# Font sizes in points; an SVG point is 4/3 px, so 10 pt is 13.3 px and 9.5 pt 12.7 px at the SVG's own
# size: readable, and at least 12 px wherever a chart is shown unscaled.
FONT = 10
SMALL_FONT = 9.5
_RC: Any = {  # Any: matplotlib types rc keys as Literals
    "svg.fonttype": "none",
    "font.size": FONT,
    "axes.titlesize": FONT,
    "axes.labelsize": FONT,
    "xtick.labelsize": SMALL_FONT,
    "ytick.labelsize": SMALL_FONT,
    "legend.fontsize": SMALL_FONT,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "path.simplify": True,
}


def _figure(width: float, height: float) -> Any:
    # Fixed margins rather than constrained layout: a layout engine draws every figure twice, which doubled
    # the time to render a report.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _svg(figure: Any, salt: str, titles: dict[str, list[str]] | None = None) -> str:
    """The figure as inline SVG; `titles` gives the markers of the artist with each gid their hover text."""
    import matplotlib

    buffer = io.StringIO()
    settings: Any = {**_RC, "svg.hashsalt": f"repro-audit-{salt}"}
    with matplotlib.rc_context(settings):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return add_titles(text[text.index("<svg"):], titles or {})


def decades(axis: Any) -> None:
    """Log-axis labels as plain text, 1e-7 rather than mathtext's 10 with a superscript: the exponent, the
    part that matters, would be drawn at 70% of the font size."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"1e{round(math.log10(value))}" if value > 0 else "0"))
    axis.set_minor_formatter(NullFormatter())


def mark_nan_steps(ax: Any, steps: Sequence[int], *, label: bool) -> None:
    """Steps where NaN appeared, as light red bands across the panel (labelled "NaN" on top when asked)."""
    for start, end in _runs(sorted(steps)):
        ax.axvspan(start - 0.5, end + 0.5, color=NAN_COLOR, alpha=0.08, linewidth=0)
        if label:
            ax.text((start + end) / 2, 1.0, "NaN", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    color=NAN_COLOR, fontsize=SMALL_FONT)


def _runs(steps: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive steps as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for step in steps:
        if runs and step == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], step)
        else:
            runs.append((step, step))
    return runs


def loss_chart(view: dict[str, Any], labels: Sequence[str]) -> tuple[str, int]:
    """One panel per loss term (and the total): run A solid, run B dashed, steps with a non-finite value
    shaded, each point's value on hover. Returns the SVG and the number of terms cut."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    terms = list(view["series"])
    shown = terms[:MAX_LOSS_PANELS]
    if "total_loss" not in shown:
        shown[-1:] = ["total_loss"]
    columns = len(shown) if len(shown) <= 4 else 3  # up to four panels side by side: one row
    rows = math.ceil(len(shown) / columns)
    titles: dict[str, list[str]] = {}
    with matplotlib.rc_context(_RC):
        figure = _figure(10.0, 2.6 * rows + 0.9)
        axes = figure.subplots(rows, columns, squeeze=False)
        figure.subplots_adjust(left=0.08, right=0.98, top=1 - 0.95 / figure.get_figheight(),
                               bottom=0.55 / figure.get_figheight(), wspace=0.35, hspace=0.9)
        for position, term in enumerate(shown):
            ax = axes[position // columns][position % columns]
            series = view["series"][term]
            for side, color, style, label in zip("ab", COLORS, ("-", "--"), labels):
                gid = f"loss-{position}-{side}"
                ax.plot(view["steps"], series[side], style, color=color, marker="o", markersize=4, linewidth=1.4,
                        label=_plain_text(label), gid=gid)
                titles[gid] = [f"{term} · step {step} · {label}: {value!r}"
                               for step, value in zip(view["steps"], series[side]) if math.isfinite(value)]
            nonfinite = view["nonfinite_steps"][term]
            mark_nan_steps(ax, nonfinite, label=bool(nonfinite))
            title = term if not nonfinite else f"{term}\nnon-finite from step {nonfinite[0]}"
            ax.set_title(_plain_text(title), loc="left", color=NAN_COLOR if nonfinite else "black", pad=14)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(view["steps"][0] - 0.5, view["steps"][-1] + 0.5)
        for position in range(len(shown), rows * columns):
            axes[position // columns][position % columns].set_visible(False)
        handles, names = axes[0][0].get_legend_handles_labels()
        figure.legend(handles, names, loc="upper left", ncol=2, frameon=False, bbox_to_anchor=(0.07, 1.0))
        return _svg(figure, "loss", titles), len(terms) - len(shown)


def nan_map_chart(names: Sequence[str], steps: Sequence[int], matrices: Sequence[list[list[int]]],
                  labels: Sequence[str]) -> str:
    """Heat strip of NaN+Inf gradient counts: parameters (rows) x steps (columns), one panel per run."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    labelled = len(names) <= MAX_LABELLED_ROWS
    height = 1.0 + 0.16 * len(names) if labelled else 4.0
    with matplotlib.rc_context(_RC):
        figure = _figure(9.0, height)
        axes = figure.subplots(1, 2, squeeze=False, sharey=True)[0]
        left = 0.35 if labelled else 0.08
        figure.subplots_adjust(left=left, right=0.9, top=1 - 0.3 / height, bottom=0.5 / height, wspace=0.08)
        peak = max([1] + [value for matrix in matrices for row in matrix for value in row])
        cmap = matplotlib.colormaps["Reds"].with_extremes(bad="#f4f4f4")
        image = None
        for ax, matrix, label in zip(axes, matrices, labels):
            data = np.ma.masked_equal(np.asarray(matrix, dtype=float).reshape(len(names), len(steps)), 0)
            image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap,
                              norm=LogNorm(vmin=1, vmax=max(peak, 2)),
                              extent=(steps[0] - 0.5, steps[-1] + 0.5, len(names) - 0.5, -0.5))
            ax.set_title(_plain_text(f"{label}: non-finite gradient values"), loc="left")
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _name_axis(axes[0], names, "y")
        if image is not None:
            bar = figure.add_axes((0.92, 0.5 / height, 0.015, 1 - 0.8 / height))
            colorbar = figure.colorbar(image, cax=bar, label="NaN + Inf count")
            decades(colorbar.ax.yaxis)
        return _svg(figure, "nanmap")


@dataclass
class SeriesPanel:
    """One panel of values over steps: named lines, dashed threshold lines, what was not drawn in its title."""

    title: str
    ylabel: str
    steps: list[int]
    lines: list[tuple[str, list[float]]]
    log: bool = False
    limits: list[tuple[str, float]] = field(default_factory=list)  # (legend label, y) of a horizontal line
    emphasis: str | None = None  # the name of a line drawn thick and black, e.g. the whole network's
    note: str = ""  # said after the title, in red: lines cut, values a log axis cannot show
    ylim: tuple[float, float] | None = None
    # Lines drawn through their missing values (NaN): for figures read at some steps only (TF's heap after
    # step 8), where a gap means "not read", not a value to break the line at.
    joined: bool = False


def series_chart(panels: Sequence[SeriesPanel], *, salt: str) -> str:
    """Panels stacked vertically, each with its own legend on the right; `salt` keeps SVG ids unique."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context(_RC):
        figure = _figure(9.0, 2.6 * len(panels) + 0.5)
        axes = figure.subplots(len(panels), 1, squeeze=False)
        figure.subplots_adjust(left=0.08, right=0.7, top=1 - 0.3 / figure.get_figheight(),
                               bottom=0.45 / figure.get_figheight(), hspace=0.55)
        for panel, row in zip(panels, axes):
            ax = row[0]
            for index, (name, values) in enumerate(panel.lines):
                emphasised = name == panel.emphasis
                steps, values = _read_at(panel.steps, values) if panel.joined else (panel.steps, values)
                ax.plot(steps, values, color="black" if emphasised else LINE_COLORS[index % len(LINE_COLORS)],
                        linestyle=LINE_STYLES[(index // len(LINE_COLORS)) % len(LINE_STYLES)],
                        linewidth=2.0 if emphasised else 1.1, marker="o", markersize=2.5, label=_plain_text(name))
            for label, value in panel.limits:
                ax.axhline(value, color="#b00020", linestyle=(0, (4, 3)), linewidth=0.9, label=_plain_text(label))
            drawn = [value for _, values in panel.lines for value in values if math.isfinite(value)]
            if panel.log and any(value > 0 for value in drawn):
                ax.set_yscale("log")
                decades(ax.yaxis)
                _mark_zeros(ax, panel)
            if panel.ylim:
                ax.set_ylim(*panel.ylim)
            title = _plain_text(panel.title + (f"  [{panel.note}]" if panel.note else ""))
            ax.set_title(title, loc="left", color="#b00020" if panel.note else "black")
            ax.set_xlabel("step")
            ax.set_ylabel(_plain_text(panel.ylabel))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if panel.steps:
                ax.set_xlim(panel.steps[0] - 0.5, panel.steps[-1] + 0.5)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=SMALL_FONT)
        return _svg(figure, salt)


def _read_at(steps: Sequence[int], values: Sequence[float]) -> tuple[list[int], list[float]]:
    """The steps a value was read at, and those values."""
    kept = [(step, value) for step, value in zip(steps, values) if math.isfinite(value)]
    return [step for step, _ in kept], [value for _, value in kept]


def _mark_zeros(ax: Any, panel: SeriesPanel) -> None:
    """Values of exactly 0, which a log axis cannot place, as ▼ on the step axis in their line's colour."""
    for index, (name, values) in enumerate(panel.lines):
        zeros = [step for step, value in zip(panel.steps, values) if value == 0]
        if zeros:
            color = "black" if name == panel.emphasis else LINE_COLORS[index % len(LINE_COLORS)]
            ax.plot(zeros, [0.0] * len(zeros), linestyle="none", marker="v", markersize=6, color=color,
                    transform=ax.get_xaxis_transform(), clip_on=False)


def _plain_text(text: str) -> str:
    """A user's name (loss term, label, parameter) as literal text: matplotlib would read `$...$` in it as
    mathtext and fail on bad TeX. Every `$` escaped leaves no math to parse, and matplotlib turns `\\$` back
    into `$`. Every user string given to matplotlib goes through here."""
    return str(text).replace("$", r"\$")


def _name_axis(ax: Any, names: Sequence[str], axis: str) -> None:
    if len(names) <= MAX_LABELLED_ROWS:
        ticks = list(range(len(names)))
        shown = [_plain_text(name) for name in names]
        if axis == "x":
            ax.set_xticks(ticks, shown, rotation=60, ha="right", fontsize=SMALL_FONT)
        else:
            ax.set_yticks(ticks, shown, fontsize=SMALL_FONT)
    else:
        label = f"parameter position (registration order, {len(names)} parameters)"
        (ax.set_xlabel if axis == "x" else ax.set_ylabel)(label)


@dataclass
class BandPanel:
    """One metric over steps: A's band (min to max, median line), B's band and median, steps B is outside."""

    title: str
    steps: list[int]
    a: tuple[list[float], list[float], list[float]]  # median, low, high
    b: tuple[list[int], list[float], list[float], list[float]] | None = None  # steps, median, low, high
    outside: list[int] = field(default_factory=list)


def band_chart(panels: Sequence[BandPanel], labels: Sequence[str]) -> str:
    """Seed-to-seed bands, one panel per metric, two columns: shaded range, median line; steps where B lies
    outside A's spread are marked on B's median."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    with matplotlib.rc_context(_RC):
        figure = _figure(9.0, 2.3 * rows + 0.4)
        axes = figure.subplots(rows, columns, squeeze=False)
        figure.subplots_adjust(left=0.08, right=0.98, top=1 - 0.3 / figure.get_figheight(),
                               bottom=0.45 / figure.get_figheight(), wspace=0.22, hspace=0.65)
        for position, panel in enumerate(panels):
            ax = axes[position // columns][position % columns]
            median, low, high = panel.a
            ax.fill_between(panel.steps, low, high, color=COLORS[0], alpha=0.18, linewidth=0)
            ax.plot(panel.steps, median, "-", color=COLORS[0], marker="o", markersize=2.5, linewidth=1.2,
                    label=_plain_text(f"{labels[0]} (median, range)"))
            if panel.b is not None:
                steps_b, median_b, low_b, high_b = panel.b
                ax.fill_between(steps_b, low_b, high_b, color=COLORS[1], alpha=0.14, linewidth=0)
                ax.plot(steps_b, median_b, "--", color=COLORS[1], marker="o", markersize=2.5, linewidth=1.2,
                        label=_plain_text(f"{labels[1]} (median, range)"))
                marked = [(step, value) for step, value in zip(steps_b, median_b) if step in panel.outside]
                if marked:
                    ax.plot([s for s, _ in marked], [v for _, v in marked], linestyle="none", marker="x",
                            markersize=6, color="#b00020", label="outside A's spread")
                    ax.legend(loc="best", frameon=False, fontsize=6)
            ax.set_title(_plain_text(panel.title), loc="left")
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if panel.steps:
                ax.set_xlim(panel.steps[0] - 0.5, panel.steps[-1] + 0.5)
        for position in range(len(panels), rows * columns):
            axes[position // columns][position % columns].set_visible(False)
        axes[0][0].legend(loc="best", frameon=False, fontsize=6)
        return _svg(figure, "bands")

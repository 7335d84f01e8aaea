"""Charts of how far run B is from run A, drawn from `Comparison.distances` (computed by audit/diff/distance.py):
the divergence over steps per category, and the gradient distance per parameter.

Log scales, because a difference of determinism grows over decades (1e-7 to 1e-2). A value of 0 (identical,
or a difference below what summaries resolve) cannot sit on a log axis and is a ▼ on the step axis; a step
whose values hold NaN is shaded and its unknown distances are ✕ at the top. Every point has its numbers on
hover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from repro_audit.reports.html.charts import (
    FONT,
    NAN_COLOR,
    SMALL_FONT,
    _figure,
    _plain_text,
    _svg,
    decades,
    mark_nan_steps,
)

CATEGORY_COLORS = {"data": "#17becf", "module_outputs": "#2ca02c", "loss_terms": "#9467bd",
                   "gradients": "#1f77b4", "parameters": "#ff7f0e", "buffers": "#8c564b"}
MEASURES = (("max_abs", "max |A − B|"), ("max_rel", "relative: max |A − B| / max(|A|, |B|)"))
MAX_NAMED_PARAMETERS = 40  # parameter names on the gradient-flow axis; beyond, module groups are named
MAX_GROUPS = 30
MAX_LABEL = 26  # characters of a name on the slanted parameter axis; longer ones keep their end (whole on hover)


def number(value: float | None, *, exact: bool = True) -> str:
    """A distance as the report writes it: 3 significant digits, `≥` for a bound from summaries."""
    if value is None:
        return "not known"
    return f"{'' if exact else '≥ '}{value:.3g}"


def divergence_chart(distances: dict[str, Any]) -> str | None:
    """Both measures over the steps, one line per category that differs at some step; None when no
    category differs (nothing to draw)."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    steps = distances["steps"]
    drawn = {name: series for name, series in distances["categories"].items() if any(series["differing"])}
    if not drawn:
        return None
    nan_steps = sorted({step for series in drawn.values() for step, nan in zip(steps, series["nan"]) if nan})
    titles: dict[str, list[str]] = {}
    with matplotlib.rc_context({"font.size": FONT}):
        figure = _figure(6.6, 5.0)
        axes = figure.subplots(2, 1, sharex=True)
        figure.subplots_adjust(left=0.14, right=0.97, top=0.92, bottom=0.2, hspace=0.3)
        for ax, (measure, label) in zip(axes, MEASURES):
            for name, series in drawn.items():
                _category_line(ax, measure, name, series, steps, titles)
            _log_axis(ax)
            mark_nan_steps(ax, nan_steps, label=ax is axes[0])
            ax.set_ylabel("relative" if measure == "max_rel" else "max |A − B|")
            ax.set_title(label, loc="left", fontsize=FONT, pad=14 if ax is axes[0] else 6)
        axes[-1].set_xlabel("step")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1].set_xlim(steps[0] - 0.5, steps[-1] + 0.5)
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), frameon=False,
                      fontsize=SMALL_FONT, bbox_to_anchor=(0.55, 0.0))
        return _svg(figure, "divergence", titles)


def _category_line(ax: Any, measure: str, name: str, series: dict[str, list[Any]], steps: Sequence[int],
                   titles: dict[str, list[str]]) -> None:
    color = CATEGORY_COLORS.get(name, "#555555")
    values = series[measure]
    positive = [index for index, value in enumerate(values) if value is not None and value > 0]
    line_gid = f"dist-{measure}-{name}"
    # NaN where there is no positive value: the line breaks there instead of bridging an unknown step.
    ys = [value if value is not None and value > 0 else math.nan for value in values]
    ax.plot(list(steps), ys, "-o", color=color, markersize=5, linewidth=1.6, label=_plain_text(name), gid=line_gid)
    titles[line_gid] = [_point_title(name, steps[index], series, index) for index in positive]
    zeros = [index for index, value in enumerate(values) if value == 0]
    unknown = [index for index, value in enumerate(values) if value is None and series["compared"][index]]
    for indices, y, marker, suffix in ((zeros, 0.0, "v", "zero"), (unknown, 1.0, "X", "unknown")):
        if not indices:
            continue
        gid = f"dist-{measure}-{name}-{suffix}"
        ax.plot([steps[index] for index in indices], [y] * len(indices), linestyle="none", marker=marker,
                markersize=7, color=NAN_COLOR if suffix == "unknown" else color,
                markerfacecolor=color if suffix == "zero" else NAN_COLOR, transform=ax.get_xaxis_transform(),
                clip_on=False, gid=gid)
        titles[gid] = [_point_title(name, steps[index], series, index) for index in indices]


def _point_title(name: str, step: int, series: dict[str, list[Any]], index: int) -> str:
    compared, differing = series["compared"][index], series["differing"][index]
    nan, nonfinite = series["nan"][index], series["nonfinite"][index]
    head = f"{name} · step {step}: "
    if not differing:
        return head + f"identical ({compared} compared)"
    exact = bool(series["exact"][index])
    if series["max_abs"][index] is None:
        text = f"distance not known: {nonfinite} of {compared} hold NaN or Inf"
    elif series["max_abs"][index] == 0:
        text = "differs by less than the recorded summaries resolve (keep values for exact numbers)"
    else:
        ulp = series["max_ulp"][index]
        text = (f"max |A − B| {number(series['max_abs'][index], exact=exact)}, relative "
                f"{number(series['max_rel'][index], exact=exact)}"
                + (f", {'' if exact else '≥ '}{ulp} ULP" if ulp is not None else ""))
    counts = f"; {differing} of {compared} differ" + (f", {nan} hold NaN" if nan else "")
    return head + text + counts


def _log_axis(ax: Any) -> None:
    """A log axis around the positive values drawn; none at all (every value identical or unknown): no scale."""
    positive = [float(y) for line in ax.get_lines() for y in line.get_ydata()
                if line.get_transform() is ax.transData and isinstance(y, (int, float)) and y > 0]
    if not positive:
        ax.set_yticks([])
        return
    from matplotlib.ticker import LogLocator

    ax.set_yscale("log")
    # Whole decades, at least three: a difference is read by its order of magnitude.
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    if high - low < 3:
        low, high = low - (3 - (high - low)) // 2 - (3 - (high - low)) % 2, high + (3 - (high - low)) // 2
    ax.set_ylim(10.0 ** low, 10.0 ** high)
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
    decades(ax.yaxis)
    ax.grid(True, which="major", axis="y", color="#e3e6ea", linewidth=0.6)


def gradient_flow_chart(flow: dict[str, Any], norms: dict[int, tuple[list[float] | None, list[float] | None]],
                        labels: Sequence[str]) -> str | None:
    """Per parameter (registration order), how far the gradients of A and B are apart at a few steps:
    the relative distance on a log axis, identical gradients as ▼, NaN as ✕; names and norms on hover."""
    import matplotlib

    names, panels = flow["names"], flow["panels"]
    if not names or not panels:
        return None
    titles: dict[str, list[str]] = {}
    named = len(names) <= MAX_NAMED_PARAMETERS
    with matplotlib.rc_context({"font.size": FONT}):
        panel_height = 2.3
        bottom = 1.9 if named or _groups(names) else 0.7
        figure = _figure(10.0, panel_height * len(panels) + bottom + 0.3)
        axes = figure.subplots(len(panels), 1, squeeze=False, sharex=True)
        height = figure.get_figheight()
        figure.subplots_adjust(left=0.08, right=0.98, top=1 - 0.35 / height, bottom=bottom / height, hspace=0.45)
        for panel, row in zip(panels, axes):
            _flow_panel(row[0], panel, names, norms.get(panel["step"], (None, None)), labels, titles)
        _parameter_axis(axes[-1][0], names)
        return _svg(figure, "gradflow", titles)


def _flow_panel(ax: Any, panel: dict[str, Any], names: Sequence[str],
                norms: tuple[list[float] | None, list[float] | None], labels: Sequence[str],
                titles: dict[str, list[str]]) -> None:
    step = panel["step"]
    groups: dict[str, list[int]] = {"differs": [], "zero": [], "unknown": []}
    for index in range(len(names)):
        differs, rel = panel["differs"][index], panel["max_rel"][index]
        if differs is None:
            continue
        if rel is None:
            groups["unknown"].append(index)
        elif differs and rel > 0:
            groups["differs"].append(index)
        else:
            groups["zero"].append(index)
    styles = {"differs": ("o", "#1f77b4", None), "zero": ("v", "#9aa3ad", 0.0), "unknown": ("X", NAN_COLOR, 1.0)}
    for group, indices in groups.items():
        if not indices:
            continue
        marker, color, fixed = styles[group]
        gid = f"flow-{step}-{group}"
        transform = ax.get_xaxis_transform() if fixed is not None else ax.transData
        ys = [fixed] * len(indices) if fixed is not None else [panel["max_rel"][index] for index in indices]
        ax.plot(indices, ys, linestyle="none", marker=marker, markersize=5 if group == "differs" else 6, color=color,
                transform=transform, clip_on=False, gid=gid)
        titles[gid] = [_flow_title(names[index], step, panel, index, norms, labels) for index in indices]
    _log_axis(ax)
    counts = f"{len(groups['differs']) + len(groups['unknown'])} of {sum(map(len, groups.values()))} differ"
    nan = sum(1 for value in panel["nan"] if value)
    note = f", {nan} hold NaN" if nan else ""
    ax.set_title(f"step {step}: gradient distance per parameter ({counts}{note})", loc="left",
                 color=NAN_COLOR if nan else "black")
    ax.set_ylabel("relative")
    ax.set_xlim(-0.5, len(names) - 0.5)


def _flow_title(name: str, step: int, panel: dict[str, Any], index: int,
                norms: tuple[list[float] | None, list[float] | None], labels: Sequence[str]) -> str:
    exact = bool(panel["exact"][index])
    if not panel["differs"][index]:
        text = "identical"
    elif panel["max_abs"][index] is None:
        text = "distance not known: NaN or Inf" + (" (NaN)" if panel["nan"][index] else "")
    else:
        text = (f"max |A − B| {number(panel['max_abs'][index], exact=exact)}, relative "
                f"{number(panel['max_rel'][index], exact=exact)}")
    recorded = [f"{label} norm {values[index]:.4g}" for label, values in zip(labels, norms)
                if values is not None and index < len(values) and math.isfinite(values[index])]
    return f"{name} · step {step}: {text}" + (f" ({'; '.join(recorded)})" if recorded else "")


def _groups(names: Sequence[str]) -> list[tuple[int, str]]:
    """Where each module group starts (the first three parts of a parameter's module path), when few enough
    to name on the axis."""
    starts: list[tuple[int, str]] = []
    for index, name in enumerate(names):
        group = ".".join(name.split(".")[:-1][:3]) or name
        if not starts or starts[-1][1] != group:
            starts.append((index, group))
    return starts if len(starts) <= MAX_GROUPS else []


def _spaced(groups: list[tuple[int, str]], total: int) -> list[tuple[int, str]]:
    """The groups whose names fit: a label at least a 24th of the axis after the previous one."""
    labelled: list[tuple[int, str]] = []
    for index, group in groups:
        if not labelled or index - labelled[-1][0] >= total / 24:
            labelled.append((index, group))
    return labelled


def _axis_label(name: str) -> str:
    """A name short enough that, slanted, it stays inside the chart: its end, which tells parameters apart."""
    return _plain_text(name if len(name) <= MAX_LABEL else "…" + name[-(MAX_LABEL - 1):])


def _parameter_axis(ax: Any, names: Sequence[str]) -> None:
    if len(names) <= MAX_NAMED_PARAMETERS:
        ax.set_xticks(range(len(names)), [_axis_label(name) for name in names], rotation=60, ha="right",
                      rotation_mode="anchor")
        return
    groups = _groups(names)
    if not groups:
        ax.set_xlabel(f"parameter position (registration order, {len(names)} parameters)")
        return
    labelled = _spaced(groups, len(names))
    ax.set_xticks([index for index, _ in labelled], [_axis_label(group) for _, group in labelled], rotation=60,
                  ha="right", rotation_mode="anchor")
    for row in ax.figure.axes:
        for index, _ in groups[1:]:
            row.axvline(index - 0.5, color="#d8dde3", linewidth=0.8, zorder=0)
    ax.set_xlabel(f"parameters in registration order ({len(names)}), first of each module group named")

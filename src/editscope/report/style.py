"""The look of every report figure: sizes, fonts, one colour per run, and the shared drawing helpers.

Figures are built with the object API (``matplotlib.figure.Figure``, no pyplot): nothing global is
touched except inside :func:`style_context`, and figures are freed when they go out of scope.
PNGs are rendered by Agg.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# Okabe & Ito (2008) colour-blind-safe palette without black (black is the unedited reference),
# then tab10 for more runs. The run's position in the report picks its colour in every figure.
RUN_COLORS: tuple[str, ...] = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#8C564B",
    "#7F7F7F",
    "#BCBD22",
    "#17BECF",
)
REFERENCE_COLOR = "#000000"
EDITED_SHADE = "#E8E8E8"
LAYER_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


@dataclass(frozen=True)
class FigureStyle:
    """Size and typography of the report figures.

    Attributes:
        panel_width: width of one panel, inches (three panels make a 7.5 in, two-column-wide figure).
        panel_height: height of one panel row, inches.
        font_size: base font size, points (axis labels; ticks one point smaller).
        line_width: width of emphasized lines (edited layers, means, quality curves), points.
        thin_width: width of de-emphasized lines (unedited layers, single layers), points.
        marker_size: marker size, points; markers are drawn while a series has at most ``max_markers`` points.
        max_markers: series with more checkpoints are drawn as plain lines (a single point always gets one).
    """

    panel_width: float = 2.5
    panel_height: float = 2.3
    font_size: float = 9.0
    line_width: float = 1.6
    thin_width: float = 0.8
    marker_size: float = 3.5
    max_markers: int = 40


def run_color(index: int) -> str:
    return RUN_COLORS[index % len(RUN_COLORS)]


@contextlib.contextmanager
def style_context(style: FigureStyle) -> Iterator[None]:
    """rcParams for building and saving report figures (restored on exit)."""
    params = {
        "font.family": "DejaVu Sans",
        "font.size": style.font_size,
        "axes.titlesize": style.font_size,
        "axes.labelsize": style.font_size,
        "xtick.labelsize": style.font_size - 1,
        "ytick.labelsize": style.font_size - 1,
        "legend.fontsize": style.font_size - 1,
        "legend.frameon": False,
        "figure.titlesize": style.font_size + 1,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": "#DDDDDD",
        "grid.linewidth": 0.6,
        "axes.axisbelow": True,
        "lines.solid_capstyle": "round",
        "mathtext.fontset": "dejavusans",
        "svg.fonttype": "none",  # text stays text in SVG: smaller, searchable, editable
        "pdf.fonttype": 42,  # TrueType in PDF (journals reject Type 3)
        "savefig.facecolor": "white",
        "axes.formatter.useoffset": False,
    }
    with matplotlib.rc_context(params):
        yield


def new_figure(style: FigureStyle, rows: int, cols: int, *, panel_width: float | None = None) -> tuple[Figure, list[list[Axes]]]:
    """A figure of ``rows`` x ``cols`` panels (``panel_width`` inches wide each) with constrained layout."""
    width = (panel_width or style.panel_width) * cols
    figure = Figure(figsize=(width, style.panel_height * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, [list(row) for row in axes]


def plot_series(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    style: FigureStyle,
    *,
    color: str,
    emphasized: bool = True,
    marker: str = "o",
    linestyle: str = "-",
    alpha: float = 1.0,
    label: str | None = None,
    zorder: float = 2,
) -> None:
    """One curve: markers while there are few points (a lone checkpoint is still visible)."""
    if not xs:
        return
    # thin (de-emphasized) curves get markers only where a lone point would otherwise be invisible
    show_markers = len(xs) == 1 or (emphasized and len(xs) <= style.max_markers)
    ax.plot(
        xs,
        ys,
        color=color,
        linestyle=linestyle,
        linewidth=style.line_width if emphasized else style.thin_width,
        marker=marker if show_markers else None,
        markersize=style.marker_size if emphasized else style.marker_size * 0.7,
        alpha=alpha,
        label=label,
        zorder=zorder,
    )


def shade_layers(ax: Axes, layers: Sequence[int], label: str | None = "edited layers") -> None:
    """Grey bands behind the edited layers of a per-layer panel."""
    for i, layer in enumerate(sorted(set(layers))):
        ax.axvspan(layer - 0.5, layer + 0.5, color=EDITED_SHADE, zorder=0, linewidth=0, label=label if i == 0 else None)


def integer_x(ax: Axes) -> None:
    """Integer ticks on the x axis (edits, layers)."""
    ax.xaxis.get_major_locator().set_params(integer=True)


def log_spaced(points: Sequence[float]) -> bool:
    """Whether checkpoints are spread over decades (a scale study's 100, 200, 500, 1,000, 2,000): at least three
    after step 0, spanning a factor of 10 or more, with the widest gap at least 3x the narrowest (evenly spaced
    checkpoints stay on a linear axis)."""
    xs = sorted({float(x) for x in points if x > 0})
    if len(xs) < 3 or xs[-1] / xs[0] < 10:
        return False
    gaps = [b - a for a, b in zip(xs, xs[1:])]
    return max(gaps) >= 3 * min(gaps)


def _plotted_x(ax: Axes) -> list[float]:
    """x values of the curves in data coordinates (not reference lines drawn across the axes)."""
    return [float(x) for line in ax.get_lines() if line.get_transform().contains_branch_seperately(ax.transData)[0]
            for x in line.get_xdata()]  # fmt: skip


def edits_axis(ax: Axes) -> None:
    """The x axis of an "over edits" panel (call after plotting): from 0 edits, integer ticks, a lone checkpoint
    centred; where the checkpoints are log-spaced (:func:`log_spaced`), a log axis (linear below the first
    checkpoint, so that step 0 stays on it) ticked at the checkpoints."""
    ax.set_xlabel("edits")
    if not ax.has_data():
        integer_x(ax)
        return
    xs = _plotted_x(ax)
    if log_spaced(xs):
        points = sorted({x for x in xs if x > 0})
        ax.set_xscale("symlog", linthresh=points[0], linscale=0.5)
        ax.set_xticks([0.0, *points] if min(xs) <= 0 else points)
        ax.set_xticklabels([f"{x:,.0f}" for x in ax.get_xticks()])
        ax.set_xlabel("edits (log scale)")
        return
    integer_x(ax)
    lo, hi = ax.dataLim.intervalx
    if hi - lo < 1:
        ax.set_xlim(lo - 1, hi + 1)
        ax.set_xticks([lo])
    elif lo > 0:  # curves that start after step 0 (edit quality) share the axis origin of the others
        ax.set_xlim(left=-0.05 * hi)


def run_legend(
    figure: Figure, names: Sequence[str], colors: Sequence[str], style: FigureStyle, extra: Sequence[Line2D] = ()
) -> None:
    """The figure's legend below the panels: one entry per run (its colour), then any style keys."""
    handles = [Line2D([], [], color=c, linewidth=style.line_width, marker="o", markersize=style.marker_size) for c in colors]
    handles += list(extra)
    labels = list(names) + [h.get_label() for h in extra]
    fits = max(2, int(figure.get_figwidth() / 1.45))  # entries per row that fit the figure's width
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), fits))


def style_key(label: str, style: FigureStyle, **line: object) -> Line2D:
    """A legend entry explaining a line style (drawn in grey: it applies to every run's colour)."""
    props = {"color": "#555555", "linewidth": style.line_width, **line}
    return Line2D([], [], label=label, **props)

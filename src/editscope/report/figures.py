"""The report's figures, one function each: runs overlaid, one colour per run, x = edits or layer.

Every function takes the runs (their colours follow their order) and a :class:`FigureStyle` and
returns a ``Figure``, or ``None`` when no run measured what it shows (the report then logs and
skips it). "Over edits" panels plot every checkpoint; "per layer" panels compare each run's last
checkpoint with the unedited model (step 0, black dashed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from editscope.report.data import ReportRun, mean_curve
from editscope.report.style import (
    EDITED_SHADE,
    LAYER_MARKERS,
    REFERENCE_COLOR,
    FigureStyle,
    edits_axis,
    integer_x,
    new_figure,
    plot_series,
    run_color,
    run_legend,
    shade_layers,
    style_key,
)

LAYER = "layer"
FRO = r"$\Vert W\Vert_F$"
TASK_NAMES = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "rte": "RTE", "nli": "NLI", "mmlu": "MMLU"}
QUALITY = ("efficacy", "paraphrase", "neighborhood", "score")

Colored = list[tuple[ReportRun, str]]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: file stem, heading, caption, and the function that draws it."""

    name: str
    title: str
    caption: str
    draw: Callable[[Sequence[ReportRun], FigureStyle], Figure | None]


def colored_runs(runs: Sequence[ReportRun], has: Callable[[ReportRun], bool]) -> Colored:
    """The runs that have what a figure needs, each with its report-wide colour."""
    return [(run, run_color(i)) for i, run in enumerate(runs) if run.records and has(run)]


def finish_figure(figure: Figure, present: Colored, style: FigureStyle, title: str, extra: Sequence = ()) -> Figure:
    run_legend(figure, [r.name for r, _ in present], [c for _, c in present], style, extra)
    figure.suptitle(title, fontweight="bold")
    return figure


def _matrix_label(run: ReportRun) -> str:
    """``mlp.down_proj`` from ``model.layers.4.mlp.down_proj.weight``."""
    param = next(iter(run.weight_params.values()), "")
    match = re.search(r"\.\d+\.(.+?)(?:\.weight)?$", param)
    return match.group(1) if match else "edited"


KeyOf = Callable[[ReportRun, int], str]


def _layer_profile(
    ax: Axes, present: Colored, key: KeyOf, layers_of: Callable[[ReportRun], list[int]], style: FigureStyle
) -> None:
    """Per-layer values: the unedited model (first run's step 0) and every run's last checkpoint."""
    first = present[0][0]
    layers = layers_of(first)
    reference = [(layer, first.records[0]["metrics"].get(key(first, layer))) for layer in layers]
    reference = [(x, y) for x, y in reference if y is not None]
    for run, color in present:
        last = run.records[-1]["metrics"]
        points = [(layer, last[key(run, layer)]) for layer in layers_of(run) if key(run, layer) in last]
        plot_series(ax, [p[0] for p in points], [p[1] for p in points], style, color=color, zorder=3)
    if reference:
        ax.plot(
            [p[0] for p in reference],
            [p[1] for p in reference],
            color=REFERENCE_COLOR,
            linestyle="--",
            linewidth=style.thin_width,
            zorder=4,
        )
    shade_layers(ax, sorted({layer for run, _ in present for layer in run.edited_layers}), label=None)
    ax.set_xlabel(LAYER)
    integer_x(ax)


def _layers_over_edits(
    ax: Axes, present: Colored, key: KeyOf, layers_of: Callable[[ReportRun], list[int]], style: FigureStyle, *, relative: bool
) -> None:
    """Every layer from the first edited one on (thin), and their mean (thick), over edits."""
    for run, color in present:
        start = min(run.edited_layers, default=0)
        curves = [
            (run.relative_series if relative else run.series)(key(run, layer)) for layer in layers_of(run) if layer >= start
        ]
        curves_and_mean(ax, curves, color, style)
    edits_axis(ax)


def curves_and_mean(ax: Axes, curves: Sequence[tuple[list[int], list[float]]], color: str, style: FigureStyle) -> None:
    """Each curve thin and faint, their mean (where all have a point) bold, in one run's colour."""
    for xs, ys in curves:
        plot_series(ax, xs, ys, style, color=color, emphasized=False, alpha=0.35, zorder=2)
    plot_series(ax, *mean_curve(curves), style, color=color, zorder=3)


# -- weights -------------------------------------------------------------------------------------
def weight_norms(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    present = colored_runs(runs, lambda r: bool(r.weight_params))
    if not present:
        return None
    figure, ((over, growth, profile),) = new_figure(style, 1, 3)
    for run, color in present:
        for layer, param in run.weight_params.items():
            edited = layer in run.edited_layers
            look = {"emphasized": edited, "alpha": 1.0 if edited else 0.3, "zorder": 3 if edited else 2}
            plot_series(over, *run.series(f"weight/{param}/fro"), style, color=color, **look)
            plot_series(growth, *run.relative_series(f"weight/{param}/fro"), style, color=color, **look)
    over.set(title="(a) every layer over edits", ylabel=FRO)
    growth.set(title="(b) change against the unedited", ylabel=FRO + " change (%)")
    for ax in (over, growth):
        edits_axis(ax)
    _layer_profile(profile, present, lambda r, i: f"weight/{r.weight_params.get(i)}/fro", lambda r: list(r.weight_params), style)
    profile.set(title="(c) per layer, last checkpoint", ylabel=FRO)
    extra = [
        style_key("edited layer", style),
        style_key("unedited layer", style, linewidth=style.thin_width, alpha=0.5),
        style_key("unedited model", style, color=REFERENCE_COLOR, linestyle="--", linewidth=style.thin_width),
        Patch(color=EDITED_SHADE, label="edited layers"),
    ]
    return finish_figure(figure, present, style, f"Frobenius norm of the {_matrix_label(present[0][0])} matrices", extra)


def delta_norms(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    present = colored_runs(runs, lambda r: any(k.endswith("/delta_fro") for k in r.keys) and bool(r.edited_layers))
    if not present:
        return None
    figure, ((over, profile),) = new_figure(style, 1, 2, panel_width=3.4)
    layers = sorted({layer for run, _ in present for layer in run.edited_layers})
    marker = {layer: LAYER_MARKERS[i % len(LAYER_MARKERS)] for i, layer in enumerate(layers)}
    for run, color in present:
        for layer in run.edited_layers:
            if layer in run.weight_params:
                plot_series(
                    over, *run.series(f"weight/{run.weight_params[layer]}/delta_fro"), style, color=color, marker=marker[layer]
                )
    over.set(title="(a) edited layers over edits", ylabel=r"$\Vert W - W_0\Vert_F$")
    edits_axis(over)
    _layer_profile(
        profile, present, lambda r, i: f"weight/{r.weight_params.get(i)}/delta_fro", lambda r: list(r.weight_params), style
    )
    profile.set(title="(b) per layer, last checkpoint", ylabel=r"$\Vert W - W_0\Vert_F$")
    extra = [style_key(f"layer {layer}", style, linestyle="none", marker=marker[layer]) for layer in layers[:8]]
    return finish_figure(figure, present, style, "Cumulative update norm of the edited matrices", extra)


def balance(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    def part(run: ReportRun) -> str | None:
        return next((k.split("/")[1] for k in sorted(run.keys) if k.startswith("weight/") and k.endswith("/balance")), None)

    present = colored_runs(runs, lambda r: part(r) is not None)
    if not present:
        return None
    figure, ((ratio, means),) = new_figure(style, 1, 2, panel_width=3.4)
    for run, color in present:
        name = part(run)
        plot_series(ratio, *run.series(f"weight/{name}/balance"), style, color=color, zorder=3)
        plot_series(means, *run.series(f"weight/{name}/edited_fro_mean"), style, color=color, zorder=3)
        plot_series(
            means, *run.series(f"weight/{name}/unedited_fro_mean"), style, color=color, linestyle="--", marker="s", zorder=2
        )
    base = present[0][0].first_value(f"weight/{part(present[0][0])}/balance")
    if base is not None:
        ratio.axhline(base, color=REFERENCE_COLOR, linestyle=":", linewidth=style.thin_width, zorder=1)
    ratio.set(title="(a) balance", ylabel="mean " + FRO + " edited / unedited")
    means.set(title="(b) mean norm of each group", ylabel="mean " + FRO)
    for ax in (ratio, means):
        edits_axis(ax)
    extra = [
        style_key("edited layers", style),
        style_key("unedited layers", style, linestyle="--", marker="s", markersize=style.marker_size),
        style_key("unedited model", style, color=REFERENCE_COLOR, linestyle=":", linewidth=style.thin_width),
    ]
    return finish_figure(figure, present, style, "Balance: edited against unedited matrices", extra)


# -- activations and subspaces ------------------------------------------------------------------
def activation_norms(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    def layers(run: ReportRun) -> list[int]:
        return run.site_layers("act", "resid", "norm")

    def key(run: ReportRun, layer: int) -> str:
        return f"act/layers.{layer}.resid/norm"

    present = colored_runs(runs, lambda r: bool(layers(r)))
    if not present:
        return None
    figure, ((over, profile),) = new_figure(style, 1, 2, panel_width=3.4)
    _layers_over_edits(over, present, key, layers, style, relative=True)
    over.set(title="(a) layers from the first edited one, over edits", ylabel=r"$\Vert h\Vert_2$ change (%)")
    _layer_profile(profile, present, key, layers, style)
    profile.set(title="(b) per layer, last checkpoint", ylabel=r"mean $\Vert h\Vert_2$")
    extra = [
        style_key("mean over layers", style),
        style_key("single layer", style, linewidth=style.thin_width, alpha=0.5),
        style_key("unedited model", style, color=REFERENCE_COLOR, linestyle="--", linewidth=style.thin_width),
        Patch(color=EDITED_SHADE, label="edited layers"),
    ]
    return finish_figure(figure, present, style, "Residual-stream activation norms", extra)


def subspace_shift(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    stats = [
        (s, label)
        for s, label in (("angle_mean", "principal angle (degrees)"), ("cka", "linear CKA"))
        if any(r.site_layers("subspace", "resid", s) for r in runs)
    ]
    present = colored_runs(runs, lambda r: any(r.site_layers("subspace", "resid", s) for s, _ in stats))
    if not present:
        return None
    figure, axes = new_figure(style, len(stats), 2, panel_width=3.4)
    letters = iter("abcd")
    for (statistic, label), (over, profile) in zip(stats, axes):

        def key(run: ReportRun, layer: int, statistic: str = statistic) -> str:
            return f"subspace/layers.{layer}.resid/{statistic}"

        def layers(run: ReportRun, statistic: str = statistic) -> list[int]:
            return run.site_layers("subspace", "resid", statistic)

        _layers_over_edits(over, present, key, layers, style, relative=False)
        over.set(title=f"({next(letters)}) over edits", ylabel=label)
        _layer_profile(profile, present, key, layers, style)
        profile.set(title=f"({next(letters)}) per layer, last checkpoint", ylabel=label)
    extra = [
        style_key("mean over layers", style),
        style_key("single layer", style, linewidth=style.thin_width, alpha=0.5),
        style_key("unedited model", style, color=REFERENCE_COLOR, linestyle="--", linewidth=style.thin_width),
    ]
    return finish_figure(figure, present, style, "Subspace shift of the residual stream against the unedited model", extra)


# -- edit quality and general ability ----------------------------------------------------------
def percent(value: float) -> float:
    return 100.0 * value


def edit_quality(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    rows = [
        (prefix, label)
        for prefix, label in (("edit", "all edits so far"), ("edit/latest", "latest batch"))
        if any(f"{prefix}/{m}" in r.keys for r in runs for m in QUALITY)
    ]
    present = colored_runs(runs, lambda r: any(f"{p}/{m}" in r.keys for p, _ in rows for m in QUALITY))
    if not present:
        return None
    figure, axes = new_figure(style, len(rows), len(QUALITY), panel_width=2.2)
    for (prefix, label), row in zip(rows, axes):
        for metric, ax in zip(QUALITY, row):
            for run, color in present:
                plot_series(ax, *run.series(f"{prefix}/{metric}", percent), style, color=color)
            ax.set(title=f"{metric} · {label}", ylabel=f"{metric} (%)", ylim=(-4, 104))
            edits_axis(ax)
    return finish_figure(figure, present, style, "Edit quality: every edit so far (retention sample) and the latest batch")


def downstream(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    tasks = sorted(
        {k.split("/")[1] for r in runs for k in r.keys if k.startswith("downstream/")},
        key=lambda t: (list(TASK_NAMES).index(t) if t in TASK_NAMES else len(TASK_NAMES), t),
    )
    metrics = [
        (m, label, scale)
        for m, label, scale in (("acc", "accuracy (%)", percent), ("mcc", "MCC", None))
        if any(f"downstream/{t}/{m}" in r.keys for r in runs for t in tasks)
    ]
    present = colored_runs(runs, lambda r: any(k.startswith("downstream/") for k in r.keys))
    if not present or not metrics:
        return None
    figure, axes = new_figure(style, len(metrics), len(tasks), panel_width=2.0)
    for (metric, label, scale), row in zip(metrics, axes):
        for task, ax in zip(tasks, row):
            for run, color in present:
                plot_series(ax, *run.series(f"downstream/{task}/{metric}", scale), style, color=color)
            ax.set(title=TASK_NAMES.get(task, task), ylabel=label)
            edits_axis(ax)
    return finish_figure(figure, present, style, "Downstream ability (few-shot): accuracy and Matthews correlation")


def perplexity(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    panels = sorted({k for r in runs for k in r.keys if k.startswith("ppl/")})
    panels += ["edit/entropy"] if any("edit/entropy" in r.keys for r in runs) else []
    present = colored_runs(runs, lambda r: any(k in r.keys for k in panels))
    if not present:
        return None
    figure, (row,) = new_figure(style, 1, len(panels), panel_width=3.0)
    for key, ax in zip(panels, row):
        values = []
        for run, color in present:
            xs, ys = run.series(key)
            values += ys
            plot_series(ax, xs, ys, style, color=color)
        if key == "edit/entropy":
            ax.set(title="generation fluency", ylabel="n-gram entropy (bits)")
            papers = ax.secondary_yaxis("right", functions=(lambda bits: 100 * bits, lambda scaled: scaled / 100))
            papers.set_ylabel("x100 (the papers' scale)")
        else:
            ax.set(title=f"held-out perplexity · {key.split('/', 1)[1]}", ylabel="perplexity")
            if values and min(values) > 0 and max(values) / min(values) > 30:
                ax.set(yscale="log", ylabel="perplexity (log scale)")  # a collapsing model's perplexity spans decades
        edits_axis(ax)
    return finish_figure(figure, present, style, "Language modelling: held-out perplexity and generation fluency")


CORE_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "weight_norms",
        "Norms of edited and unedited matrices",
        "Frobenius norm of every layer's matrix over edits, absolute (a) and against the unedited model (b); "
        "edited layers bold, unedited thin. (c) per layer at each run's last checkpoint, edited layers shaded.",
        weight_norms,
    ),
    FigureSpec(
        "delta_norms",
        "Cumulative update norm",
        "Frobenius norm of W − W0 for each edited layer over edits (a), and per layer at the last checkpoint (b).",
        delta_norms,
    ),
    FigureSpec(
        "balance",
        "Balance",
        "Mean Frobenius norm of the edited matrices over that of the unedited ones (a); the two means (b).",
        balance,
    ),
    FigureSpec(
        "activation_norms",
        "Activation norms",
        "Mean L2 norm of residual-stream activations on the probe texts: change against the unedited model "
        "for every layer from the first edited one (thin) and their mean (bold) (a); per layer (b).",
        activation_norms,
    ),
    FigureSpec(
        "subspace_shift",
        "Subspace shift",
        "Mean principal angle between the top-k PCA subspaces of edited and unedited residual activations, "
        "and their linear CKA: over edits (layers from the first edited one; mean bold) and per layer.",
        subspace_shift,
    ),
    FigureSpec(
        "edit_quality",
        "Edit quality",
        "Efficacy, paraphrase, neighborhood (locality) and their harmonic mean (score), over a sample of every "
        "edit so far (top) and over the latest batch (bottom).",
        edit_quality,
    ),
    FigureSpec("downstream", "Downstream ability", "Few-shot accuracy and Matthews correlation per task over edits.", downstream),
    FigureSpec(
        "perplexity",
        "Perplexity and fluency",
        "Held-out perplexity per corpus and n-gram entropy of sampled generations over edits.",
        perplexity,
    ),
)

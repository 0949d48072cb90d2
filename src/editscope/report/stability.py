"""The figures the stability papers read: spectrum of the edited matrices, retention by edit age,
and each run's collapse point. Same conventions as :mod:`editscope.report.figures`."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from editscope.report.data import ReportRun
from editscope.report.figures import Colored, FigureSpec, colored_runs, curves_and_mean, finish_figure, percent
from editscope.report.style import REFERENCE_COLOR, FigureStyle, edits_axis, new_figure, plot_series, style_key
from editscope.runs.summary import AGE_EFFICACY


def _edited_params(run: ReportRun, statistic: str) -> list[str]:
    """Edited layers' parameters that have ``weight/<param>/<statistic>``."""
    return [p for layer, p in run.weight_params.items() if layer in run.edited_layers and f"weight/{p}/{statistic}" in run.keys]


def _edited_mean(ax: Axes, present: Colored, statistic: str, style: FigureStyle) -> None:
    """Each edited matrix's ``statistic`` over edits (thin) and their mean (bold)."""
    for run, color in present:
        curves_and_mean(ax, [run.series(f"weight/{p}/{statistic}") for p in _edited_params(run, statistic)], color, style)
    edits_axis(ax)


def spectrum(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    present = colored_runs(runs, lambda r: bool(_edited_params(r, "cond")))
    if not present:
        return None
    figure, ((cond, top, rank),) = new_figure(style, 1, 3)
    _edited_mean(cond, present, "cond", style)
    cond.set(title="(a) condition number of W", ylabel=r"$\sigma_{max}/\sigma_{min}$")
    _edited_mean(top, present, "delta_sv/1", style)
    top.set(title=r"(b) top singular value of $W - W_0$", ylabel=r"$\sigma_1(W - W_0)$")
    _edited_mean(rank, present, "delta_stable_rank", style)
    rank.set(title=r"(c) stable rank of $W - W_0$", ylabel=r"$\Vert\Delta\Vert_F^2 / \sigma_1^2$")
    extra = [
        style_key("mean of edited matrices", style),
        style_key("single matrix", style, linewidth=style.thin_width, alpha=0.5),
    ]
    return finish_figure(figure, present, style, "Spectrum of the edited matrices and of their cumulative update", extra)


def age_buckets(record: dict) -> list[tuple[int, str]]:
    """``(lower edge, label)`` of the age buckets in one checkpoint record, youngest first."""
    found = {(int(m.group(1)), m.group(1) + m.group(2)) for k in record["metrics"] if (m := AGE_EFFICACY.match(k))}
    return sorted(found)


def retention_by_age(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    present = colored_runs(runs, lambda r: any(AGE_EFFICACY.match(k) for k in r.keys))
    if not present:
        return None
    labels = sorted({b for run, _ in present for rec in run.records for b in age_buckets(rec)})
    position = {label: i for i, (_, label) in enumerate(labels)}
    figure, ((efficacy, paraphrase),) = new_figure(style, 1, 2, panel_width=3.4)
    for ax, statistic in ((efficacy, "efficacy"), (paraphrase, "paraphrase")):
        for run, color in present:
            scored = [rec for rec in run.records if age_buckets(rec)]
            for i, record in enumerate(scored):
                last = i == len(scored) - 1
                points = [
                    (position[label], percent(record["metrics"][key]))
                    for _, label in age_buckets(record)
                    if (key := f"edit/age/{label}/{statistic}") in record["metrics"]
                ]
                plot_series(
                    ax, [p[0] for p in points], [p[1] for p in points], style, color=color,
                    emphasized=last, alpha=1.0 if last else 0.3, zorder=3 if last else 2,
                )  # fmt: skip
        ax.set_xticks(range(len(labels)), [label for _, label in labels], rotation=30)
        ax.set(title=f"({'ab'[statistic == 'paraphrase']}) {statistic} by age", xlabel="edits applied since the edit",
               ylabel=f"{statistic} (%)", ylim=(-4, 104))  # fmt: skip
    extra = [
        style_key("last checkpoint", style),
        style_key("earlier checkpoints", style, linewidth=style.thin_width, alpha=0.4),
    ]
    return finish_figure(figure, present, style, "Retention by edit age: how well older edits hold", extra)


def _criterion_series(run: ReportRun, criterion: str) -> tuple[list[int], list[float]]:
    """The quantity a collapse criterion reads, over edits (perplexity: the largest rise in percent)."""
    if criterion == "efficacy":
        return run.series("edit/efficacy", percent)
    if criterion == "ppl":
        corpora = sorted({k for k in run.keys if k.startswith("ppl/")})
        curves = [run.relative_series(k) for k in corpora]
        xs = sorted(set.intersection(*(set(c[0]) for c in curves))) if curves else []
        return xs, [max(ys[x_list.index(x)] for x_list, ys in curves) for x in xs]
    agree: dict[int, list[float]] = {}
    for record in run.records:
        values = [v for k, v in record["metrics"].items() if k.startswith("downstream/") and k.endswith("/agree")]
        if values:
            agree[int(record["edits"])] = values
    return sorted(agree), [percent(statistics.fmean(agree[x])) for x in sorted(agree)]


def collapse(runs: Sequence[ReportRun], style: FigureStyle) -> Figure | None:
    rule = runs[0].collapse_rule if runs else None
    if rule is None:
        return None
    panels = [
        (name, title, label, threshold)
        for name, title, label, threshold in (
            ("efficacy", "retained efficacy", "efficacy (%)", None if rule.efficacy_below is None else 100 * rule.efficacy_below),
            ("ppl", "perplexity rise", "largest ppl change (%)", rule.ppl_rise_pct),
            (
                "agree",
                "downstream agreement",
                "agreement (%)",
                None if rule.agreement_below is None else 100 * rule.agreement_below,
            ),
        )
        if threshold is not None and any(_criterion_series(r, name)[0] for r in runs if r.records)
    ]
    present = colored_runs(runs, lambda r: any(_criterion_series(r, name)[0] for name, *_ in panels))
    if not present or not panels:
        return None
    figure, (row,) = new_figure(style, 1, len(panels), panel_width=3.0)
    for (name, title, label, threshold), ax in zip(panels, row):
        for run, color in present:
            xs, ys = _criterion_series(run, name)
            plot_series(ax, xs, ys, style, color=color, zorder=3)
            point = run.collapse
            if point is not None and point.edits in xs:
                ax.plot([point.edits], [ys[xs.index(point.edits)]], marker="X", markersize=3 * style.marker_size,
                        color=color, markeredgecolor="black", linestyle="none", zorder=5)  # fmt: skip
        ax.axhline(threshold, color=REFERENCE_COLOR, linestyle=":", linewidth=style.thin_width, zorder=1)
        ax.set(title=title, ylabel=label)
        edits_axis(ax)
    extra = [
        style_key("threshold", style, color=REFERENCE_COLOR, linestyle=":", linewidth=style.thin_width),
        style_key(
            "collapse point", style, linestyle="none", marker="X", markersize=2 * style.marker_size, markeredgecolor="black"
        ),
    ]
    return finish_figure(figure, present, style, f"Collapse point: the first checkpoint where {rule.describe()}", extra)


STABILITY_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "spectrum",
        "Spectrum of the edited matrices",
        "Condition number sigma_max/sigma_min of each edited matrix (a), the largest singular value (b) and the "
        "stable rank (c) of its cumulative update W − W0, over edits (exact SVD; mean of the edited matrices bold).",
        spectrum,
    ),
    FigureSpec(
        "retention_by_age",
        "Retention by edit age",
        "Efficacy (a) and paraphrase (b) of earlier edits grouped by how many edits were applied after them "
        "(retention sample and latest batch), at each run's last checkpoint (bold) and earlier ones (faint).",
        retention_by_age,
    ),
    FigureSpec(
        "collapse",
        "Collapse point",
        "The quantities the collapse rule reads, over edits, with its thresholds (dotted) and each run's "
        "collapse point (X): retained efficacy, the largest held-out perplexity rise, mean downstream agreement.",
        collapse,
    ),
)

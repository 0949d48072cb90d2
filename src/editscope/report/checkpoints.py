"""Figures of weight change outside editing runs: a checkpoint diff and a post-training run's norms.

* :func:`diff_figure` -- two heat maps, matrix type x layer: the relative norm change
  (‖W_B‖ − ‖W_A‖) / ‖W_A‖ and the relative distance ‖W_B − W_A‖ / ‖W_A‖ (``editscope diff --figure``).
* :func:`posttrain_figure` -- the mean relative norm change of each matrix type over the training
  steps, the training loss and the held-out perplexity (written by ``editscope posttrain``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from editscope.diff.compare import MatrixDiff, diffs_from_records, summarize_kinds
from editscope.report.style import FigureStyle, new_figure, plot_series, run_color, style_context


def _grid(rows: Sequence[MatrixDiff], value: str) -> tuple[list[str], list[int], np.ndarray]:
    kinds = list(dict.fromkeys(r.kind for r in rows if r.layer is not None))
    layers = sorted({r.layer for r in rows if r.layer is not None})
    grid = np.full((len(kinds), len(layers)), np.nan)
    for r in rows:
        if r.layer is not None:
            grid[kinds.index(r.kind), layers.index(r.layer)] = 100.0 * getattr(r, value)
    return kinds, layers, grid


def diff_figure(rows: Sequence[MatrixDiff], style: FigureStyle, title: str) -> Figure:
    """Heat maps (matrix type x layer) of the norm change and of the distance, in percent."""
    if not any(r.layer is not None for r in rows):
        raise ValueError("no per-layer matrices to draw")
    figure, axes = new_figure(style, 1, 2, panel_width=max(style.panel_width * 1.6, 4.0))
    panels = (("norm_change", r"$(\Vert W_B\Vert_F-\Vert W_A\Vert_F)/\Vert W_A\Vert_F$ (%)", "RdBu_r"),
              ("relative", r"$\Vert W_B-W_A\Vert_F/\Vert W_A\Vert_F$ (%)", "viridis"))
    for ax, (value, label, cmap) in zip(axes[0], panels):
        kinds, layers, grid = _grid(rows, value)
        if cmap == "RdBu_r":
            bound = float(np.nanmax(np.abs(grid))) or 1.0
            image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-bound, vmax=bound, interpolation="nearest")
        else:
            image = ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_yticks(range(len(kinds)), kinds)
        ticks = list(range(0, len(layers), max(1, len(layers) // 8)))
        ax.set_xticks(ticks, [str(layers[i]) for i in ticks])
        ax.set_xlabel("layer")
        ax.set_title(label)
        ax.grid(False)
        figure.colorbar(image, ax=ax, shrink=0.9)
    figure.suptitle(title)
    return figure


def kind_series(records: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per matrix type, the mean over its matrices of (‖W‖ − ‖W0‖) / ‖W0‖ at each record, in percent."""
    first = records[0]["metrics"]
    series: dict[str, list[float]] = {}
    for record in records:
        for kind in summarize_kinds(diffs_from_records(first, record["metrics"])):
            series.setdefault(kind.kind, []).append(100.0 * kind.mean_norm_change)
    return series


def posttrain_figure(records: Sequence[Mapping[str, Any]], style: FigureStyle, title: str) -> Figure:
    """Norm change per matrix type, training loss and perplexity over the steps of one run."""
    steps = [r["step"] for r in records]
    figure, axes = new_figure(style, 1, 3, panel_width=max(style.panel_width, 2.8))
    ax = axes[0][0]
    for index, (kind, values) in enumerate(kind_series(records).items()):
        plot_series(ax, steps, values, style, color=run_color(index), label=kind)
    ax.axhline(0.0, color="#000000", linewidth=style.thin_width)
    ax.set_xlabel("step")
    ax.set_ylabel(r"mean $\Delta\Vert W\Vert_F$ (%)")
    ax.legend(loc="best", fontsize=style.font_size - 2)
    trained = [r for r in records if "train/loss" in r["metrics"]]
    axes[0][1].set_xlabel("step")
    axes[0][1].set_ylabel("training loss (nats/token)")
    if trained:
        plot_series(axes[0][1], [r["step"] for r in trained], [r["metrics"]["train/loss"] for r in trained], style, color=run_color(0), label="train")
        axes[0][1].legend(loc="best")
    ppl_keys = sorted({k for r in records for k in r["metrics"] if k.startswith("ppl/")})
    for index, key in enumerate(ppl_keys):
        rows = [r for r in records if key in r["metrics"]]
        plot_series(axes[0][2], [r["step"] for r in rows], [r["metrics"][key] for r in rows], style, color=run_color(index), label=key)
    axes[0][2].set_xlabel("step")
    axes[0][2].set_ylabel("held-out perplexity")
    if ppl_keys:
        axes[0][2].legend(loc="best")
    figure.suptitle(title)
    return figure


def write_figure(draw: Callable[[], Figure], path: str | Path, style: FigureStyle, dpi: int = 200) -> Path:
    """Draw (inside the report style) and write to ``path``, format from the suffix, through a temporary file."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"figure {path}: use a .png, .svg or .pdf file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with style_context(style):
        draw().savefig(tmp, format=fmt, dpi=dpi)
    os.replace(tmp, path)
    return path

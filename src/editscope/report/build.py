"""``build_report``: figures and ``report.html`` from one or many run folders, written atomically.

The report folder is assembled in a temporary sibling and then replaces ``out`` in one rename: a
reader (a browser, a web server) sees the old report or the new one, never a mix. Because the whole
folder is replaced, ``out`` must be new, empty, or an earlier report (it holds ``report.html``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from editscope.errors import EditscopeError
from editscope.report.catalog import FIGURES
from editscope.report.data import ReportRun, load_runs
from editscope.report.figures import FigureSpec
from editscope.report.html import RenderedFigure, render_html
from editscope.report.style import FigureStyle, style_context
from editscope.runs.collapse import CollapseRule
from editscope.runs.summary import summarize_records
from editscope.storage import atomic_directory

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
FIGURE_DIR = "figures"
_FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class ReportConfig:
    """What the report draws and how.

    Attributes:
        title: heading of ``report.html``.
        formats: files written per figure; the first must be ``png`` (shown in the page), the others
            (``svg``, ``pdf``: vector, for papers) are linked under each figure.
        dpi: resolution of the PNGs, dots per inch (200: sharp on high-density screens and in print).
        figures: names of the figures to draw (``FIGURES`` in ``report/catalog.py``); empty: all.
        style: sizes and fonts of the figures.
        collapse: thresholds of each run's collapse point (summary table and the collapse figure).
    """

    title: str = "editscope report"
    formats: tuple[str, ...] = ("png", "svg")
    dpi: int = 200
    figures: tuple[str, ...] = ()
    style: FigureStyle = field(default_factory=FigureStyle)
    collapse: CollapseRule = field(default_factory=CollapseRule)

    def __post_init__(self) -> None:
        if not self.formats or self.formats[0] != "png" or not set(self.formats) <= set(_FORMATS):
            raise EditscopeError(f"report formats: 'png' first, then any of svg, pdf; got {list(self.formats)}")
        unknown = set(self.figures) - {f.name for f in FIGURES}
        if unknown:
            raise EditscopeError(f"report figures: unknown {sorted(unknown)}; known: {', '.join(f.name for f in FIGURES)}")
        if self.dpi < 50:
            raise EditscopeError(f"report dpi: at least 50, got {self.dpi}")


def _selected(config: ReportConfig) -> list[FigureSpec]:
    return [f for f in FIGURES if not config.figures or f.name in config.figures]


def render_figures(runs: Sequence[ReportRun], folder: Path, config: ReportConfig = ReportConfig()) -> list[RenderedFigure]:
    """Draw every figure that has data into ``folder`` (one file per format); log the skipped ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rendered = []
    with style_context(config.style):
        for spec in _selected(config):
            figure = spec.draw(runs, config.style)
            if figure is None:
                logger.info("figure %s skipped: no run has its metrics", spec.name)
                continue
            files = {}
            for fmt in config.formats:
                path = folder / f"{spec.name}.{fmt}"
                figure.savefig(path, format=fmt, dpi=config.dpi, metadata=_metadata(fmt, spec))
                files[fmt] = path
            size = (float(figure.get_figwidth()), float(figure.get_figheight()))
            rendered.append(RenderedFigure(spec.name, spec.title, spec.caption, files, size))
            logger.info("figure %s: %s", spec.name, ", ".join(str(p) for p in files.values()))
    return rendered


def _metadata(fmt: str, spec: FigureSpec) -> dict[str, str | None]:
    """Reproducible files: no creation date; the figure's title recorded where the format allows."""
    if fmt == "svg":
        return {"Date": None, "Title": spec.title}
    if fmt == "pdf":
        return {"CreationDate": None, "Title": spec.title}
    return {"Software": "editscope (matplotlib)", "Title": spec.title}


def _check_out(out: Path, runs: Sequence[ReportRun]) -> None:
    """``out`` is replaced as a whole: refuse a run folder (or one holding runs) and any foreign folder."""
    resolved = out.resolve()
    for run in runs:
        folder = run.folder.resolve()
        if resolved == folder or resolved in folder.parents:
            raise EditscopeError(f"report --out {out}: would replace run folder {run.folder}")
    if out.exists() and not out.is_dir():
        raise EditscopeError(f"report --out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_HTML).is_file():
        raise EditscopeError(
            f"report --out {out}: not empty and not an earlier report (no {REPORT_HTML}); the folder would be replaced"
        )


def summary_row(run: ReportRun) -> dict[str, object]:
    """The run's row of the summary table (``runs.summary``); only ``edits`` where it cannot be computed."""
    try:
        return {"run": run.name, **summarize_records(run.records, run.collapse_rule)}
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        logger.warning("%s: no summary row (%s: %s)", run.folder, type(exc).__name__, exc)
        return {"run": run.name, "edits": run.edits_done}


def build_report(runs: Sequence[str | Path], out: str | Path, config: ReportConfig = ReportConfig()) -> Path:
    """Write ``out/report.html`` and ``out/figures/*`` for the run folders ``runs``; return the HTML path.

    Runs still in progress report what their ``metrics.jsonl`` holds now; a torn line is skipped
    with a warning. Figures whose metrics no run measured are left out (logged at INFO).
    """
    out = Path(out)
    loaded = load_runs([Path(r) for r in runs], config.collapse)
    _check_out(out, loaded)
    rows = [summary_row(run) for run in loaded]
    with atomic_directory(out) as tmp:
        figures = render_figures(loaded, tmp / FIGURE_DIR, config)
        drawn = {f.name for f in figures}
        skipped = [spec.title for spec in _selected(config) if spec.name not in drawn]
        html = render_html(config.title, loaded, rows, figures, root=tmp, skipped=skipped, collapse=config.collapse.describe())
        (tmp / REPORT_HTML).write_text(html, encoding="utf-8")
    logger.info("report: %s (%d figures, %d runs)", out / REPORT_HTML, len(figures), len(loaded))
    return out / REPORT_HTML

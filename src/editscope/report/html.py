"""``report.html``: the runs, the summary table, the figures and every run's config, in one page.

Self-contained apart from the figure files it links by relative path: no scripts, no external
styles or fonts, so it opens from a file system, a web server or an archive alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from editscope import __version__
from editscope.report.data import ReportRun
from editscope.report.style import run_color
from editscope.runs.summary import COLUMNS, format_value

DISPLAY_PX_PER_INCH = 150
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1a1a1a; background: #ffffff; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 32px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 24px 0 6px; }
.meta, figcaption, .note { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 6px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f5f5f5; font-weight: 600; }
td:first-child, th:first-child, .left { text-align: left; }
.scroll { overflow-x: auto; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
.progress { color: #b35900; font-weight: 600; }
figure { margin: 8px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f7f7f7; border: 1px solid #e4e4e4; padding: 10px; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 14px; }
"""


@dataclass(frozen=True)
class RenderedFigure:
    """A figure written to disk: file stem, heading, caption, its file per format, its size in inches."""

    name: str
    title: str
    caption: str
    files: Mapping[str, Path]
    size: tuple[float, float]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _status(run: ReportRun) -> str:
    planned = run.edits_planned
    if not run.records:
        return '<span class="progress">no checkpoint yet</span>'
    if run.in_progress:
        return f'<span class="progress">in progress: {run.edits_done} of {planned} edits</span>'
    return f"finished: {run.edits_done} edits" if planned is not None else f"{run.edits_done} edits"


def _stats_corpus(config: Mapping[str, Any]) -> str:
    """The editor's statistics corpus as the run recorded it (``resolved.corpora``): source and fingerprint."""
    corpus = ((config.get("resolved") or {}).get("corpora") or {}).get("editor.stats_corpus")
    if not corpus:
        return "-"
    resolved = corpus.get("resolved", corpus.get("source", "?"))
    details = ", ".join(f"{k} {corpus[k]}" for k in ("count", "fingerprint") if k in corpus)
    return f"{resolved} ({details})" if details else str(resolved)


def _runs_table(runs: Sequence[ReportRun]) -> str:
    rows = []
    for i, run in enumerate(runs):
        config = run.config
        rows.append(
            "<tr>"
            f'<td><span class="swatch" style="background:{run_color(i)}"></span>{_e(run.name)}</td>'
            f'<td class="left">{_e(config.get("editor", "-"))}</td><td class="left">{_e(config.get("model", "-"))}</td>'
            f'<td class="left">{_status(run)}</td><td>{len(run.records)}</td>'
            f'<td class="left">{_e(_stats_corpus(config))}</td>'
            f'<td class="left"><code>{_e(run.folder)}</code></td>'
            "</tr>"
        )
    header = (
        "<tr><th>run</th><th>editor</th><th>model</th><th>edits</th><th>checkpoints</th><th>statistics corpus</th>"
        "<th>folder</th></tr>"
    )
    return f'<div class="scroll"><table id="runs">{header}{"".join(rows)}</table></div>'


def _summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = [k for k in COLUMNS if any(k in row for row in rows)]
    header = "<tr><th>run</th>" + "".join(f"<th>{_e(COLUMNS[k])}</th>" for k in keys) + "</tr>"
    body = "".join(
        "<tr>"
        + f"<td>{_e(row['run'])}</td>"
        + "".join(f"<td>{_e(format_value(row.get(k, math.nan)))}</td>" for k in keys)
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table id="summary">{header}{body}</table></div>'


def _collapse_note(rows: Sequence[Mapping[str, Any]], rule: str) -> str:
    """The collapse rule in words and, per collapsed run, the edits and the criterion crossed."""
    if not rule:
        return ""
    collapsed = [
        f"{row['run']} at {row['collapse_at']} edits ({row['collapse_reason']})" for row in rows if row.get("collapse_reason")
    ]
    verdict = "; ".join(collapsed) if collapsed else "no run crossed it"
    return f'<p class="note" id="collapse">Collapse point: the first checkpoint where {_e(rule)}. {_e(verdict)}.</p>'


def _figure(figure: RenderedFigure, root: Path) -> str:
    files = {fmt: path.relative_to(root).as_posix() for fmt, path in figure.files.items()}
    # one scale for every figure, so that their lettering has the same size on the page
    width, height = (round(inches * DISPLAY_PX_PER_INCH) for inches in figure.size)
    links = " · ".join(f'<a href="{_e(src)}">{fmt.upper()}</a>' for fmt, src in files.items())
    return (
        f'<section id="fig-{_e(figure.name)}"><h3>{_e(figure.title)}</h3><figure>'
        f'<img src="{_e(files["png"])}" alt="{_e(figure.title)}" width="{width}" height="{height}">'
        f"<figcaption>{_e(figure.caption)} Files: {links}</figcaption></figure></section>"
    )


def _config(run: ReportRun) -> str:
    text = run.config_text.strip() or "(no config.yaml in the run folder)"
    return f"<details><summary>{_e(run.name)}: config.yaml</summary><pre>{_e(text)}</pre></details>"


def render_html(
    title: str,
    runs: Sequence[ReportRun],
    rows: Sequence[Mapping[str, Any]],
    figures: Sequence[RenderedFigure],
    *,
    root: Path,
    skipped: Sequence[str] = (),
    collapse: str = "",
) -> str:
    """The page; image and download links are relative to ``root`` (the folder holding the page)."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    in_progress = [r.name for r in runs if r.in_progress]
    notes = []
    if in_progress:
        notes.append(f"Runs still in progress (curves end at their latest checkpoint): {', '.join(in_progress)}.")
    if skipped:
        notes.append(f"Not drawn, no run measured them: {', '.join(skipped)}.")
    if not figures:
        notes.append("No figure: no run has a complete checkpoint with metrics yet.")
    nav = "".join(f'<a href="#fig-{_e(f.name)}">{_e(f.title)}</a>' for f in figures)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request (a 404 is a console error)
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""} · generated {generated} by editscope {_e(__version__)}</p>',
        "<h2>Runs</h2>",
        _runs_table(runs),
        "".join(f'<p class="note">{_e(n)}</p>' for n in notes),
        "<h2>Summary: first checkpoint against the last</h2>",
        _summary_table(rows),
        _collapse_note(rows, collapse),
        "<h2>Figures</h2>",
        f"<nav>{nav}</nav>",
        "".join(_figure(f, root) for f in figures),
        "<h2>Configs</h2>",
        "".join(_config(r) for r in runs),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"

"""Figures and the HTML report from one or many run folders (``editscope report``)."""

from editscope.report.build import REPORT_HTML, ReportConfig, build_report, render_figures
from editscope.report.catalog import FIGURES
from editscope.report.data import ReportRun, load_runs
from editscope.report.figures import FigureSpec
from editscope.report.style import FigureStyle

__all__ = [
    "FIGURES",
    "REPORT_HTML",
    "FigureSpec",
    "FigureStyle",
    "ReportConfig",
    "ReportRun",
    "build_report",
    "load_runs",
    "render_figures",
]

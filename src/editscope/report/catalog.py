"""Every figure of the report, in page order: the core findings, then the stability instruments."""

from __future__ import annotations

from editscope.report.figures import CORE_FIGURES, FigureSpec
from editscope.report.stability import STABILITY_FIGURES

FIGURES: tuple[FigureSpec, ...] = (*CORE_FIGURES, *STABILITY_FIGURES)

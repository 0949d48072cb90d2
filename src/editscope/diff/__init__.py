"""Checkpoints compared matrix by matrix, streamed block by block (``editscope diff``)."""

from editscope.diff.compare import KindSummary, MatrixDiff, diff_checkpoints, matrix_kind, summarize_kinds
from editscope.diff.sources import CheckpointError, TensorSource, open_source

__all__ = [
    "CheckpointError",
    "KindSummary",
    "MatrixDiff",
    "TensorSource",
    "diff_checkpoints",
    "matrix_kind",
    "open_source",
    "summarize_kinds",
]

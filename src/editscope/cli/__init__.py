"""``editscope <command>``: the tool's face, a thin layer over the library.

``main`` builds the parser (:mod:`editscope.cli.main`); each group of commands lives in its own
module: runs and data (``main``), studies and reports (``study``), post-training and checkpoint diffs
(``weights``), MEND training (``mend``), sweeps and sharded statistics (``scale``); ``output`` holds the
tables, JSON and progress lines they print.
"""

from editscope.cli.main import main

__all__ = ["main"]

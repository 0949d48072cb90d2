"""Plain-text tables, JSON and progress bars for the command line (the library itself only logs)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns separated by two spaces, a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join([line, sep, *body])


def emit_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def progress_bar(total: int, label: str):
    """A tqdm bar over edits, as a run's ``progress(done, total, metrics)`` callback; where stderr is
    not a terminal (a log file, a batch job) the bar is off and each call logs one line instead."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, unit="edit", dynamic_ncols=True, disable=None)
    start = time.perf_counter()

    def update(done: int, _total: int, metrics: dict[str, float]) -> None:
        bar.update(done - bar.n)
        shown = {k.split("/", 1)[1]: f"{v:.2f}" for k, v in metrics.items() if k in ("edit/efficacy", "edit/score")}
        if shown:
            bar.set_postfix(shown, refresh=False)
        if bar.disable:
            latest = "".join(f", {k} {v} (last checkpoint)" for k, v in shown.items())
            logger.info("%s: %d/%d edits, %.0f s%s", label, done, total, time.perf_counter() - start, latest)
        if done >= total:
            bar.close()

    return update

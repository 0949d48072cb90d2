"""What a worker does for one sweep run: run it (resuming from its folder) with a fixed torch thread count."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from editscope.config import from_dict
from editscope.runs.config import RunConfig


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, the caller's count restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_task(config_data: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run (or continue) one run; returns :func:`editscope.runs.loop.describe` of its summary.

    A folder that holds the same config continues from its last checkpoint (``state/``), so a
    retried run loses at most the batches since then and ends bit-identical to an uninterrupted one.
    """
    from editscope.runs.loop import describe, execute

    config = from_dict(RunConfig, config_data, where="run")
    with torch_threads(threads):
        return describe(execute(config))


def run_task_in_worker(config_data: dict[str, Any], threads: int) -> dict[str, Any]:
    """:func:`run_task` in a worker process, without the loading progress bars (they would flood the driver's log)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return run_task(config_data, threads)

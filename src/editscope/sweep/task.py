"""What a worker does: one job (an editing run, or another resumable part such as a post-training run)
with a fixed torch thread count."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from editscope.config import from_dict
from editscope.runs.config import RunConfig

Work = Callable[[dict[str, Any], int], dict[str, Any]]
"""``work(payload, threads) -> summary``: a module-level function (a worker imports it by name) that runs
or continues one job from its folder with ``threads`` torch threads."""


@dataclass(frozen=True)
class Job:
    """One unit a backend runs and retries: its name, its folder, its work and the work's plain-data argument.

    Attributes:
        name: how outcomes and logs call it.
        out: the folder it fills (a retry continues from what is there).
        work: see :data:`Work`.
        payload: the argument of ``work`` (JSON-like data: it travels to a worker).
    """

    name: str
    out: str
    work: Work
    payload: dict[str, Any]


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


def run_task_in_worker(work: Work, payload: dict[str, Any], threads: int) -> dict[str, Any]:
    """A job's work in a worker process, without the loading progress bars (they would flood the driver's log)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return work(payload, threads)

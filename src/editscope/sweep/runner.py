"""``run_sweep``: expand the grid, skip finished runs, run the rest on Ray or in process, report outcomes.
``run_jobs`` runs other resumable parts (:class:`~editscope.sweep.task.Job`) the same way."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

from editscope.config import ConfigError, to_dict
from editscope.runs.store import RunStore
from editscope.sweep.backends import run_in_process, run_on_ray
from editscope.sweep.cluster import ray_available
from editscope.sweep.config import SweepConfig, SweepRun, expand
from editscope.sweep.outcome import Listener, Outcome, SweepReport
from editscope.sweep.task import Job, run_task

logger = logging.getLogger(__name__)

Backend = Literal["auto", "ray", "inprocess"]


def choose_backend(backend: Backend, address: str | None) -> Literal["ray", "inprocess"]:
    """``auto``: Ray where it is installed, else in process (logged); ``ray`` without Ray is an error."""
    if backend == "inprocess":
        if address is not None:
            raise ConfigError("--ray-address: the in-process backend joins no cluster")
        return "inprocess"
    if ray_available():
        return "ray"
    if backend == "ray" or address is not None:
        raise ConfigError("Ray is not installed (pip install 'editscope[ray]')")
    logger.warning("Ray is not installed (pip install 'editscope[ray]'): running the sweep in this process, one run after another")
    return "inprocess"


def pending_runs(runs: list[SweepRun]) -> tuple[list[SweepRun], list[Outcome]]:
    """Runs still to do, and the skipped outcome of every run whose folder is already complete."""
    todo, skipped = [], []
    for run in runs:
        if RunStore(run.config.out).is_complete(run.config, run.config.edits):
            skipped.append(Outcome(run.name, run.config.out, "skipped"))
        else:
            todo.append(run)
    return todo, skipped


def run_sweep(
    sweep: SweepConfig, *, backend: Backend = "auto", ray_address: str | None = None, listener: Listener | None = None
) -> SweepReport:
    """Run every grid point of ``sweep`` into ``sweep.root``; ``listener`` hears each outcome as it comes."""
    return run_planned(expand(sweep), sweep, backend=backend, ray_address=ray_address, listener=listener)  # validated first


def run_planned(
    runs: list[SweepRun], sweep: SweepConfig, *, backend: Backend = "auto", ray_address: str | None = None,
    listener: Listener | None = None,
) -> SweepReport:
    """Run ``runs`` (validated run configs, e.g. ``editscope findings``'s) with ``sweep``'s resources and
    retries, on Ray or in process; finished run folders are skipped."""
    start = time.perf_counter()
    chosen = choose_backend(backend, ray_address)
    todo, skipped = pending_runs(runs)
    notify = listener or (lambda outcome: None)
    for outcome in skipped:
        logger.info("%s: already complete, skipped", outcome.name)
        notify(outcome)
    logger.info("sweep: %d runs, %d already complete, %d to run (%s)", len(runs), len(skipped), len(todo), chosen)
    ran = _run(chosen, [Job(r.name, r.config.out, run_task, to_dict(r.config)) for r in todo], sweep, notify, ray_address)
    by_name = {o.name: o for o in [*skipped, *ran]}
    return SweepReport(chosen, tuple(by_name[r.name] for r in runs), time.perf_counter() - start)


def run_jobs(
    jobs: Sequence[Job], sweep: SweepConfig, *, backend: Backend = "auto", ray_address: str | None = None,
    listener: Listener | None = None,
) -> SweepReport:
    """Run ``jobs`` with ``sweep``'s resources and retries, on Ray (in the given order as workers free up) or
    in process (one after another); each job's work skips what its folder already holds."""
    start = time.perf_counter()
    chosen = choose_backend(backend, ray_address)
    logger.info("%d jobs (%s): %s", len(jobs), chosen, ", ".join(j.name for j in jobs))
    ran = _run(chosen, list(jobs), sweep, listener or (lambda outcome: None), ray_address)
    return SweepReport(chosen, tuple(ran), time.perf_counter() - start)


def _run(chosen: str, jobs: list[Job], sweep: SweepConfig, notify: Listener, ray_address: str | None) -> list[Outcome]:
    if not jobs:
        return []
    return run_on_ray(jobs, sweep, notify, ray_address) if chosen == "ray" else run_in_process(jobs, sweep, notify)

"""Two ways to run a sweep's runs: Ray tasks (local instance or cluster), or in this process one after another.

Both retry a failed run up to ``max_retries`` times; the retried run continues from its folder's
last checkpoint. Both give every run the same torch thread count (``resources.num_cpus``), so a run
gives the same numbers whichever backend ran it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from editscope.config import to_dict
from editscope.sweep.cluster import ray_session, task_options, warn_if_unplaceable
from editscope.sweep.config import SweepConfig, SweepRun
from editscope.sweep.outcome import Listener, Outcome, describe_error, is_retryable
from editscope.sweep.task import run_task, run_task_in_worker

logger = logging.getLogger(__name__)


def _finished(run: SweepRun, attempts: int, seconds: float, result: dict) -> Outcome:
    logger.info("%s: finished (%d edits, attempt %d, %.1f s)", run.name, result["edits"], attempts, seconds)
    return Outcome(run.name, run.config.out, "finished", attempts, seconds, weights_sha256=result["weights_sha256"])


def _retry_or_fail(run: SweepRun, attempts: int, seconds: float, error: BaseException, max_retries: int) -> Outcome | None:
    """``None`` when the run gets another attempt, else its failed outcome."""
    message = describe_error(error)
    if is_retryable(error) and attempts <= max_retries:
        logger.warning("%s: attempt %d failed (%s); retrying from its last checkpoint", run.name, attempts, message)
        return None
    logger.error("%s: failed after %d attempt(s): %s", run.name, attempts, message)
    return Outcome(run.name, run.config.out, "failed", attempts, seconds, error=message)


def run_in_process(runs: Sequence[SweepRun], sweep: SweepConfig, listener: Listener) -> list[Outcome]:
    """One run after another in this process."""
    outcomes = []
    for run in runs:
        attempts = 0
        while True:
            attempts += 1
            start = time.perf_counter()
            try:
                result = run_task(to_dict(run.config), sweep.resources.threads)
            except Exception as error:  # noqa: BLE001 -- every failure is reported or retried
                outcome = _retry_or_fail(run, attempts, time.perf_counter() - start, error, sweep.max_retries)
                if outcome is None:
                    continue
            else:
                outcome = _finished(run, attempts, time.perf_counter() - start, result)
            outcomes.append(outcome)
            listener(outcome)
            break
    return outcomes


def run_on_ray(runs: Sequence[SweepRun], sweep: SweepConfig, listener: Listener, address: str | None) -> list[Outcome]:
    """Every run a Ray task with the sweep's resources; Ray places them as CPUs/GPUs free up."""
    with ray_session(address) as ray:
        warn_if_unplaceable(ray, sweep.resources.num_cpus, sweep.resources.num_gpus)
        remote = ray.remote(run_task_in_worker).options(**task_options(sweep.resources.num_cpus, sweep.resources.num_gpus, sweep.resources.threads))
        pending: dict = {}

        def submit(run: SweepRun, attempts: int) -> None:
            pending[remote.remote(to_dict(run.config), sweep.resources.threads)] = (run, attempts, time.perf_counter())

        for run in runs:
            submit(run, 1)
        outcomes = []
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            run, attempts, start = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as error:  # noqa: BLE001 -- task errors, crashed or lost workers
                outcome = _retry_or_fail(run, attempts, time.perf_counter() - start, error, sweep.max_retries)
                if outcome is None:
                    submit(run, attempts + 1)
                    continue
            else:
                outcome = _finished(run, attempts, time.perf_counter() - start, result)
            outcomes.append(outcome)
            listener(outcome)
        return outcomes

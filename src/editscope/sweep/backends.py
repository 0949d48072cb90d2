"""Two ways to run a sweep's jobs: Ray tasks (local instance or cluster), or in this process one after another.

Both retry a failed job up to ``max_retries`` times; the retried job continues from its folder's
last checkpoint. Both give every job the same torch thread count (``resources.num_cpus``), so a run
gives the same numbers whichever backend ran it. A job is an editing run or any other resumable part
(:class:`~editscope.sweep.task.Job`; ``editscope findings`` sends its post-training runs and MEND's
training this way too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from editscope.sweep.cluster import ray_session, task_options, warn_if_unplaceable
from editscope.sweep.config import SweepConfig
from editscope.sweep.outcome import Listener, Outcome, describe_error, is_retryable
from editscope.sweep.task import Job, run_task_in_worker

logger = logging.getLogger(__name__)


def _finished(job: Job, attempts: int, seconds: float, result: dict) -> Outcome:
    done = f"{result['edits']} edits, " if "edits" in result else ""
    logger.info("%s: finished (%sattempt %d, %.1f s)", job.name, done, attempts, seconds)
    return Outcome(job.name, job.out, "finished", attempts, seconds, weights_sha256=result.get("weights_sha256"))


def _retry_or_fail(job: Job, attempts: int, seconds: float, error: BaseException, max_retries: int) -> Outcome | None:
    """``None`` when the run gets another attempt, else its failed outcome."""
    message = describe_error(error)
    if is_retryable(error) and attempts <= max_retries:
        logger.warning("%s: attempt %d failed (%s); retrying from its last checkpoint", job.name, attempts, message)
        return None
    logger.error("%s: failed after %d attempt(s): %s", job.name, attempts, message)
    return Outcome(job.name, job.out, "failed", attempts, seconds, error=message)


def run_in_process(jobs: Sequence[Job], sweep: SweepConfig, listener: Listener) -> list[Outcome]:
    """One job after another in this process."""
    outcomes = []
    for job in jobs:
        attempts = 0
        while True:
            attempts += 1
            start = time.perf_counter()
            try:
                result = job.work(job.payload, sweep.resources.threads)
            except Exception as error:  # noqa: BLE001 -- every failure is reported or retried
                outcome = _retry_or_fail(job, attempts, time.perf_counter() - start, error, sweep.max_retries)
                if outcome is None:
                    continue
            else:
                outcome = _finished(job, attempts, time.perf_counter() - start, result)
            outcomes.append(outcome)
            listener(outcome)
            break
    return outcomes


def run_on_ray(jobs: Sequence[Job], sweep: SweepConfig, listener: Listener, address: str | None) -> list[Outcome]:
    """Every job a Ray task with the sweep's resources; Ray places them as CPUs/GPUs free up, in the given order."""
    with ray_session(address) as ray:
        warn_if_unplaceable(ray, sweep.resources.num_cpus, sweep.resources.num_gpus)
        remote = ray.remote(run_task_in_worker).options(**task_options(sweep.resources.num_cpus, sweep.resources.num_gpus, sweep.resources.threads))
        pending: dict = {}

        def submit(job: Job, attempts: int) -> None:
            pending[remote.remote(job.work, job.payload, sweep.resources.threads)] = (job, attempts, time.perf_counter())

        for job in jobs:
            submit(job, 1)
        outcomes = []
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job, attempts, start = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as error:  # noqa: BLE001 -- task errors, crashed or lost workers
                outcome = _retry_or_fail(job, attempts, time.perf_counter() - start, error, sweep.max_retries)
                if outcome is None:
                    submit(job, attempts + 1)
                    continue
            else:
                outcome = _finished(job, attempts, time.perf_counter() - start, result)
            outcomes.append(outcome)
            listener(outcome)
        return outcomes

"""Ray, where it is installed: joining a cluster or starting a local instance, and the workers' environment."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

# Variables a worker inherits from the driver (caches keyed by content can be shared storage).
FORWARDED_ENV = ("EDITSCOPE_HOME", "EDITSCOPE_SHARED_DATA", "HF_HOME", "HF_HUB_OFFLINE")


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def worker_env(threads: int) -> dict[str, str]:
    """Environment of every editscope task: ``threads`` math threads, and the driver's cache locations."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env.update({name: os.environ[name] for name in FORWARDED_ENV if name in os.environ})
    return env


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """The ``ray`` module, connected: to a running session as is, to ``address``, or to a new local instance.

    A session this function opened is shut down on exit; one that was already open is left open.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    if address is None:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        logger.info("started a local Ray instance (%s CPUs)", ray.cluster_resources().get("CPU"))
    else:
        ray.init(address=address, logging_level=logging.WARNING)
        logger.info("joined the Ray cluster at %s (%s CPUs, %s GPUs)", address, ray.cluster_resources().get("CPU"), ray.cluster_resources().get("GPU", 0))
    try:
        yield ray
    finally:
        ray.shutdown()


def task_options(num_cpus: float, num_gpus: float, threads: int) -> dict[str, Any]:
    """``.options(...)`` of an editscope Ray task: its resources, no automatic retries (the driver retries), its env."""
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0, "runtime_env": {"env_vars": worker_env(threads)}}


def warn_if_unplaceable(ray: Any, num_cpus: float, num_gpus: float) -> None:
    """Log when no node of the cluster, as it is now, can take one task (Ray would keep it waiting)."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if not any(r.get("CPU", 0) >= num_cpus and r.get("GPU", 0) >= num_gpus for r in nodes):
        logger.warning(
            "no node of the Ray cluster has %s CPUs and %s GPUs free for one task; tasks wait until one joins "
            "(sweep.resources asks for them)", num_cpus, num_gpus,
        )

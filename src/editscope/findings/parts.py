"""The parts the editing runs do not wait on, as sweep jobs: the three post-training runs and MEND's training.

Joining a Ray cluster (``--ray-address``), findings sends them to its workers like the editing runs
(:func:`editscope.sweep.runner.run_jobs`), longest first (MEND's training, then continued pre-training,
full fine-tuning, LoRA), each with the editing runs' thread count. On one machine they stay in the
driver, one after another with all its threads: on a 2-core Xeon in the AVX2 path the four as
one-thread jobs side by side took 34.2 min (MEND's 400 steps 4.5 s each, continued pre-training's 150
steps 9 s each: two processes slow each other down), one after another at two threads 30.9 min. Each
job continues from its folder, so a retried or repeated call loses nothing and redoes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from editscope.config import from_dict, to_dict
from editscope.posttrain.config import PosttrainConfig
from editscope.runs.store import RunStore
from editscope.sweep.task import Job, torch_threads

logger = logging.getLogger(__name__)


def posttrain_store(config: PosttrainConfig) -> RunStore:
    return RunStore(config.out, PosttrainConfig, position="step")


def posttrain_done(config: PosttrainConfig) -> bool:
    return posttrain_store(config).is_complete(config, config.steps)


def run_posttrain_resumable(config: PosttrainConfig) -> None:
    """Leave a complete run as it is, continue a begun one from its ``state/``, else run it."""
    from editscope.posttrain.loop import run_posttrain

    if posttrain_done(config):
        logger.info("%s: already complete", config.out)
        return
    run_posttrain(config, resume=posttrain_store(config).saved_config() is not None)


def posttrain_work(payload: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run (or continue) one post-training run; :data:`editscope.sweep.task.Work`."""
    config = from_dict(PosttrainConfig, payload, where="posttrain")
    with torch_threads(threads):
        run_posttrain_resumable(config)
    return {"steps": config.steps}


def mend_work(payload: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train (or continue, or reuse) MEND's hypernetwork for the findings; :data:`editscope.sweep.task.Work`.

    ``payload``: ``model``, ``data`` (the edit set), ``edited_ids`` (the edited requests, in order: held
    out), ``steps``, ``out`` (the findings folder), ``device``.
    """
    from editscope.data import load_requests
    from editscope.findings.hypernetwork import train_hypernetwork

    requests = load_requests(payload["data"])
    by_id = {r.id: r for r in requests}
    edited = [by_id[i] for i in payload["edited_ids"]]
    with torch_threads(threads):
        folder = train_hypernetwork(payload["model"], requests, edited, payload["steps"], Path(payload["out"]),
                                    data_name=payload["data"], device=payload["device"])  # fmt: skip
    return {"folder": str(folder)}


def mend_payload(model: str, data: str, edited_ids: list[str], steps: int, out: Path, device: str) -> dict[str, Any]:
    return {"model": model, "data": data, "edited_ids": list(edited_ids), "steps": steps, "out": str(out), "device": device}


def preparation_jobs(trainings: list[PosttrainConfig], mend: dict[str, Any] | None) -> list[Job]:
    """MEND's training (where asked for) and every post-training run not yet complete, longest first."""
    from editscope.findings.hypernetwork import FOLDER

    jobs = [Job("mend training", str(Path(mend["out"]) / FOLDER), mend_work, mend)] if mend is not None else []
    jobs += [Job(f"posttrain {c.mode}", c.out, posttrain_work, to_dict(c)) for c in trainings if not posttrain_done(c)]
    return jobs

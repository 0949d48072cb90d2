"""Claim 4 reads only the downstream tasks the unedited model does better than chance on
(:attr:`editscope.findings.evidence.TaskEvidence.at_chance`); the others cannot show a decay.
``screen_tasks`` applies that test once, to the unedited model's predictions, before the editing runs
start, so that they measure only the tasks the verdict reads. On SmolLM2-135M that is SST-2 alone, 8%
of the few-shot tokens of the six default tasks (RTE, MRPC, CoLA, NLI and MMLU are at chance).

The decision is saved in the findings folder (``downstream_screen.json``) with the settings it was
made for, so a resumed findings call gives its editing runs the same configuration.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from editscope.findings.evidence import EditEvidence, TaskEvidence, chance_of
from editscope.runs.config import RunConfig
from editscope.storage import atomic_write_json

logger = logging.getLogger(__name__)

SCREEN = "downstream_screen.json"


def unedited_tasks(config: RunConfig) -> tuple[TaskEvidence, ...]:
    """Every downstream task of ``config`` on the unedited model (``acc_end`` NaN: not yet measured after editing)."""
    from editscope.models import load
    from editscope.runs.config import build_instrument

    instrument = build_instrument(config, "downstream")
    loaded = load(config.model)
    scores = instrument.baseline(loaded.model, loaded.tokenizer)
    n = instrument.config.n_examples
    return tuple(TaskEvidence(t, scores[f"downstream/{t}/acc"], math.nan, n, chance_of(t)) for t in instrument.config.tasks)


def _facts(config: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps({"model": config.model, "downstream": config.instrument_config.get("downstream", {})}, default=list))


def screen_tasks(config: RunConfig, out: Path) -> tuple[TaskEvidence, ...]:
    """The unedited accuracy of each downstream task of ``config``: read from ``out/downstream_screen.json``
    where it was decided for the same model and downstream settings, else measured and saved there."""
    path, facts = out / SCREEN, _facts(config)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved["for"] == facts:
                return tuple(TaskEvidence(**t) for t in saved["tasks"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("%s: unreadable (%s); screening the tasks again", path, error)
    tasks = unedited_tasks(config)
    atomic_write_json(path, {"for": facts, "tasks": [asdict(t) for t in tasks]})
    left_out = [f"{t.task} {t.acc_start:.2f} (chance {t.chance:.2f})" for t in tasks if t.at_chance]
    logger.info("findings: downstream tasks at chance on the unedited model, not measured after editing: %s", ", ".join(left_out) or "none")
    return tasks


def measuring_only(config: RunConfig, tasks: Sequence[str]) -> RunConfig:
    """``config`` with its downstream instrument restricted to ``tasks`` (dropped where there are none)."""
    if tasks:
        downstream = {**config.instrument_config.get("downstream", {}), "tasks": list(tasks)}
        return replace(config, instrument_config={**config.instrument_config, "downstream": downstream})
    return replace(
        config,
        instruments=tuple(i for i in config.instruments if i != "downstream"),
        instrument_config={k: v for k, v in config.instrument_config.items() if k != "downstream"},
        ends_only=tuple(i for i in config.ends_only if i != "downstream"),
    )


def with_screened(evidence: EditEvidence, screened: Sequence[TaskEvidence]) -> EditEvidence:
    """``evidence`` with the tasks left out before editing added (unedited accuracy only)."""
    measured = {t.task for t in evidence.tasks}
    return replace(evidence, tasks=(*evidence.tasks, *(t for t in screened if t.task not in measured)))

"""MEND's hypernetwork for the findings, trained where none is given (``FOLDER/mend``).

Claim 2 names MEND among the families that grow the edited matrices' norms, and MEND edits only
after its hypernetwork has learned to edit. ``editscope findings`` trains one for the model with the
shipped :class:`~editscope.editors.mend.MENDTrainConfig` and the budget's number of steps, on the
edit set's requests *other than* the ones the editing runs edit: those are the checkpoint's held-out
list, so MEND edits facts it never trained on, as in the MEND paper's evaluation. The checkpoint is
resumable: a complete one is reused, a begun one continued from its last save.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editscope.config import ConfigError
from editscope.editors.mend.train_config import MENDTrainConfig, changed_settings
from editscope.types import EditRequest

logger = logging.getLogger(__name__)

FOLDER = "mend"


def training_split(requests: Sequence[EditRequest], edited: Sequence[EditRequest]) -> tuple[list[EditRequest], list[EditRequest]]:
    """(train, held out): every request of the edit set except the edited ones, and the edited ones in their order."""
    edited_ids = {r.id for r in edited}
    train = [r for r in requests if r.id not in edited_ids]
    if not train:
        raise ConfigError(f"findings: the edit set has no request left to train MEND on after the {len(edited)} edited ones; "
                          f"use a larger --data, fewer edits, or pass --mend-checkpoint")
    return train, list(edited)


def _check_reusable(folder: Path, meta: dict[str, Any], config: MENDTrainConfig, edited: Sequence[EditRequest]) -> None:
    """Refuse a finished checkpoint trained with other settings or for other edits than these."""
    differs = changed_settings(meta, config)
    if differs or meta["data"]["held_out_ids"] != [r.id for r in edited]:
        what = ", ".join(differs) or "the edited requests"
        raise ConfigError(f"{folder}: a MEND checkpoint trained for other findings ({what} differ); use another --out, "
                          f"or remove {folder} to train again")


def train_hypernetwork(
    model_name: str, requests: Sequence[EditRequest], edited: Sequence[EditRequest], steps: int, out: Path, *,
    data_name: str, device: str = "auto",
) -> Path:
    """The folder of a MEND checkpoint for ``model_name`` trained ``steps`` steps on ``requests`` minus
    ``edited`` (module docstring); trained, continued or reused."""
    from editscope.editors.mend import MENDTrainer, load_checkpoint
    from editscope.editors.mend.checkpoint import is_checkpoint
    from editscope.models import load
    from editscope.models.loading import resolve_device

    folder = out / FOLDER
    config = MENDTrainConfig(steps=steps)
    saved = load_checkpoint(folder, optimizer=True) if is_checkpoint(folder) else None
    if saved is not None and saved.step > steps:
        raise ConfigError(f"{folder}: MEND trained {saved.step} steps, more than this budget's {steps}; "
                          f"use another --out, or remove {folder} to train again")
    if saved is not None and saved.step == steps:
        _check_reusable(folder, saved.meta, config, edited)
        logger.info("%s: MEND already trained (%d steps)", folder, saved.step)
        return folder
    train, held_out = training_split(requests, edited)
    loaded = load(model_name)
    model = loaded.model.to(resolve_device(device))
    trainer = MENDTrainer(model, loaded.tokenizer, train, held_out, config, model_name=model_name,
                          data_name=f"{data_name} without the {len(held_out)} edited requests")  # fmt: skip
    if saved is not None:
        trainer.restore(saved)
    logger.info("findings: training MEND for %s, steps %d -> %d, on %d requests (%d held out: the edited ones)",
                model_name, trainer.step, steps, len(train), len(held_out))  # fmt: skip
    trainer.train(folder)
    return folder

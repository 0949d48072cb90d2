"""The post-training run's ``state/``: trainable parameters, AdamW moments, schedule, RNG, progress.

Written as a new folder that replaces the old one (``storage.atomic_directory``), after the
checkpoint's metrics line, exactly as editing runs do (``runs.store``); tensors in safetensors,
the rest in ``state.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from editscope.storage import atomic_directory

STATE = "state"


@dataclass(frozen=True)
class TrainState:
    """Everything a resumed run needs to continue bit for bit."""

    progress: dict[str, Any]
    params: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Tensor]

    @property
    def step(self) -> int:
        return int(self.progress["step"])


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``torch.optim`` state dict -> safetensors tensors (``<index>/<name>``) and plain param groups."""
    tensors = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"{index}/{key}"] = value.detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def rng_state() -> dict[str, Tensor]:
    """The CPU generator's state and, where CUDA is in use, each device's."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{index}"] = value
    return state


def set_rng_state(state: dict[str, Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_train_state(folder: Path, state: TrainState) -> None:
    """Write ``folder/state`` atomically: the old state stays until the new one is complete."""
    opt_tensors, opt_plain = flatten_optimizer(state.optimizer)
    with atomic_directory(folder / STATE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.params.items()}, str(tmp / "params.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({k: v.contiguous() for k, v in state.rng.items()}, str(tmp / "rng.safetensors"))
        meta = {"progress": state.progress, "optimizer": opt_plain, "scheduler": state.scheduler}
        (tmp / "state.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_train_state(folder: Path) -> TrainState | None:
    """The saved state, or ``None`` when the folder has none."""
    path = folder / STATE
    if not (path / "state.json").is_file():
        return None
    meta = json.loads((path / "state.json").read_text())
    return TrainState(
        progress=meta["progress"],
        params=load_file(str(path / "params.safetensors")),
        optimizer=unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta["optimizer"]),
        scheduler=meta["scheduler"],
        rng=load_file(str(path / "rng.safetensors")),
    )

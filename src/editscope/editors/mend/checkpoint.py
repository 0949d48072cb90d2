"""A trained MEND hypernetwork on disk: one folder, written atomically, checked on every load.

``DIR/hypernet.safetensors``  the network's parameters and running statistics
``DIR/optimizer.safetensors`` AdamW's moment tensors (for resuming training)
``DIR/mend.json``             the training config, the edited weights, the step, the model's
                              fingerprint, the held-out request ids and the optimizer's settings
``DIR/held_out.jsonl``        the held-out requests (the project's JSONL schema), for evaluation runs
``DIR/manifest.json``         sha256 and size of every file (:func:`editscope.storage.write_manifest`)

The folder is replaced as a whole (:func:`editscope.storage.atomic_directory`), so an interrupted
save leaves the previous checkpoint intact; a truncated or altered file fails the manifest check
with a :class:`MENDCheckpointError` that names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from editscope.editors.mend.network import MENDNetwork, WeightSlot
from editscope.errors import EditscopeError
from editscope.storage import atomic_directory, verify_manifest, write_manifest
from editscope.types import EditRequest

FORMAT = "editscope-mend"
VERSION = 1
META = "mend.json"
NETWORK = "hypernet.safetensors"
OPTIMIZER = "optimizer.safetensors"
HELD_OUT = "held_out.jsonl"


class MENDCheckpointError(EditscopeError, ValueError):
    """A MEND checkpoint is missing, corrupt, or belongs to another model."""


@dataclass(frozen=True)
class MENDCheckpoint:
    """What a checkpoint folder holds, loaded onto the CPU.

    Attributes:
        folder: where it was read from.
        meta: the ``mend.json`` record (``config``, ``slots``, ``step``, ``fingerprint``, ...).
        network: the network state (parameters and running statistics).
        optimizer: the optimizer's ``state_dict`` (``None`` when not asked for).
    """

    folder: Path
    meta: dict[str, Any]
    network: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None

    @property
    def slots(self) -> list[WeightSlot]:
        return [WeightSlot(s["name"], int(s["out"]), int(s["in"])) for s in self.meta["slots"]]

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def build_network(self) -> MENDNetwork:
        """The :class:`MENDNetwork` with the saved weights (CPU, eval mode)."""
        cfg = self.meta["config"]
        network = MENDNetwork(
            self.slots, rank=int(cfg["rank"]), hidden_layers=int(cfg["hidden_layers"]),
            step_size_init=float(cfg["step_size_init"]), seed=int(cfg["seed"]),
        )
        try:
            network.load_state_dict(self.network, strict=True)
        except RuntimeError as exc:
            raise MENDCheckpointError(f"{self.folder}/{NETWORK} does not fit the network its {META} describes: {exc}") from None
        return network.eval()

    def check_model(self, fingerprint: str) -> None:
        """Refuse a model other than the one the hypernetwork was trained for."""
        if fingerprint != self.fingerprint:
            raise MENDCheckpointError(
                f"{self.folder}: this MEND hypernetwork was trained for model {self.meta.get('model')!r} with fingerprint "
                f"{self.fingerprint}, but the model it is used with has fingerprint {fingerprint}. A hypernetwork "
                f"only works for the model it was trained on: train one with `editscope mend train --model <that model>`."
            )


def _optimizer_tensors(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<param>.<key>``) and JSON-able settings."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "scalars": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain["scalars"][f"{index}.{key}"] = value
    return tensors, plain


def _optimizer_state(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in plain.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    network: MENDNetwork,
    optimizer: torch.optim.Optimizer | None,
    meta: Mapping[str, Any],
    held_out: Sequence[EditRequest] = (),
) -> None:
    """Write a checkpoint folder atomically (replacing an older one at ``folder``)."""
    net_state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    record = {"format": FORMAT, "version": VERSION, **meta, "slots": [{"name": s.name, "out": s.out_features, "in": s.in_features} for s in network.slots]}
    with atomic_directory(folder) as tmp:
        save_file(net_state, str(tmp / NETWORK))
        if optimizer is not None:
            tensors, plain = _optimizer_tensors(optimizer.state_dict())
            save_file(tensors, str(tmp / OPTIMIZER))
            record["optimizer"] = plain
        (tmp / META).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if held_out:
            lines = (json.dumps(r.to_dict(), ensure_ascii=False) for r in held_out)
            (tmp / HELD_OUT).write_text("\n".join(lines) + "\n", encoding="utf-8")
        write_manifest(tmp, {"format": FORMAT, "version": VERSION, "step": record.get("step")})


def is_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


def _located(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise MENDCheckpointError(f"no MEND checkpoint at {path}: not a folder (train one with `editscope mend train`)")
    if not is_checkpoint(path):
        raise MENDCheckpointError(f"{path} is not a MEND checkpoint: it has no {META}")
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MENDCheckpointError(f"{path}/{META}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise MENDCheckpointError(f"{path}/{META}: format {meta.get('format')!r} v{meta.get('version')}, expected {FORMAT!r} v{VERSION}")
    for key in ("config", "slots", "step", "fingerprint"):
        if key not in meta:
            raise MENDCheckpointError(f"{path}/{META}: missing {key!r}")
    return meta


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's ``mend.json`` record, checked for its format and keys (the tensors are not read)."""
    return _read_meta(_located(folder))


def load_checkpoint(folder: str | Path, *, optimizer: bool = False) -> MENDCheckpoint:
    """Read and verify a checkpoint folder (every file against its sha256 in the manifest)."""
    path = _located(folder)
    problem = verify_manifest(path, full=True)
    if problem is not None:
        raise MENDCheckpointError(f"{path}: corrupt or incomplete MEND checkpoint ({problem}); train again or restore it")
    meta = _read_meta(path)
    try:
        network = load_file(str(path / NETWORK))
        opt_state = None
        if optimizer:
            if "optimizer" not in meta or not (path / OPTIMIZER).is_file():
                raise MENDCheckpointError(f"{path}: no optimizer state saved, cannot resume training from it")
            opt_state = _optimizer_state(load_file(str(path / OPTIMIZER)), meta["optimizer"])
    except (SafetensorError, OSError) as exc:
        raise MENDCheckpointError(f"{path}: unreadable tensors ({exc})") from None
    return MENDCheckpoint(path, meta, network, opt_state)

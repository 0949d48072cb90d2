"""The run folder (DESIGN.md): ``config.yaml``, ``metrics.jsonl`` and ``state/``.

Every write is atomic. ``metrics.jsonl`` is replaced as a whole (old lines + the new one) through
a temporary file, so a reader never sees a torn line written by this code; a torn or foreign line
left by something else is skipped with a warning. ``state/`` is written as a new folder that
replaces the old one, after the checkpoint's metrics line: on resume, metric lines past the saved
state (the run died between the two writes) are dropped and measured again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from editscope.config import ConfigError, from_dict, to_dict
from editscope.runs.config import RunConfig
from editscope.storage import atomic_directory, atomic_write_text

logger = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
STATE = "state"
CHECKPOINTS = "checkpoints"
"""``checkpoints/<edits>.safetensors``: the cumulative delta of the edited matrices at each checkpoint (the model
at any recorded checkpoint is ``W0 + C``; ``editscope export RUN@EDITS``)."""


@dataclass(frozen=True)
class SavedState:
    """A checkpoint's state: progress, cumulative deltas, editor and instrument state."""

    progress: dict[str, Any]
    deltas: dict[str, torch.Tensor]
    editor: dict[str, Any]
    instruments: dict[str, dict[str, Any]]
    rng: torch.Tensor

    @property
    def edits(self) -> int:
        return int(self.progress["edits"])


def split_state(state: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (for safetensors, keys prefixed) and the JSON-able rest of a ``state_dict``."""
    tensors, plain = {}, {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + key] = value.detach().cpu().contiguous()
        else:
            plain[key] = value
    return tensors, plain


def join_state(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`split_state` for the keys under ``prefix``."""
    joined = dict(plain)
    joined.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    return joined


class RunStore:
    """Reads and writes one run folder.

    ``config_class`` is the folder's config type (a frozen dataclass with ``digest()`` and the
    ``placement_fields`` its digest leaves out) and
    ``position`` the key that orders its metric records: ``edits`` for editing runs, ``step`` for
    post-training runs.
    """

    def __init__(self, path: str | Path, config_class: type = RunConfig, position: str = "edits") -> None:
        self.path = Path(path)
        self.config_class = config_class
        self.position = position

    # -- setup ---------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Prove the folder can be written (before any model is loaded) without creating it: a probe
        file in the folder, or in its nearest existing parent where the folder does not exist yet, so
        a refused run leaves nothing behind."""
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a folder")
            probe = existing / f".write-test.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"output folder {self.path}: not writable ({exc.strerror or exc})") from None

    def saved_config(self) -> Any:
        path = self.path / CONFIG
        if not path.is_file():
            return None
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data.pop("digest", None)
        data.pop("resolved", None)
        return from_dict(self.config_class, data, where=str(path))

    def saved_progress(self) -> dict[str, Any] | None:
        """The last checkpoint's progress record (``state/state.json``), without reading any tensor."""
        path = self.path / STATE / "state.json"
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text())["progress"])

    def is_complete(self, config: Any, last: int) -> bool:
        """Whether the folder holds ``config``'s run (same digest), checkpointed at position ``last`` (e.g. its last edit)."""
        try:
            saved = self.saved_config()
        except ConfigError:
            return False
        if saved is None or saved.digest() != config.digest():
            return False
        progress = self.saved_progress()
        return progress is not None and int(progress.get(self.position, -1)) >= last

    def check_claim(self, config: Any, *, resume: bool, overwrite: bool) -> None:
        """Raise ``ConfigError`` where :meth:`begin` would refuse the folder; writes nothing."""
        saved = self.saved_config()
        if saved is not None and not overwrite and saved.digest() != config.digest():
            changed = sorted(k for k, v in to_dict(config).items() if k not in config.placement_fields and to_dict(saved).get(k) != v)
            raise ConfigError(
                f"{self.path} holds a run with a different config (differs in: {', '.join(changed)}); "
                "use --resume to continue it or --overwrite to replace it"
            )
        if saved is None:
            if resume:
                raise ConfigError(f"--resume: {self.path} has no run to resume (no {CONFIG})")
            stray = sorted(p.name for p in self.path.iterdir() if not p.name.startswith(".")) if self.path.is_dir() else []
            if stray:
                raise ConfigError(f"{self.path} is not empty and not a run folder ({', '.join(stray[:5])}); use --overwrite or another folder")

    def begin(self, config: Any, *, resume: bool, overwrite: bool, resolved: Mapping[str, Any] | None = None) -> None:
        """Claim the folder for ``config``: refuse a different run's folder unless ``overwrite``.

        ``resolved`` (the editor's and instruments' full settings, defaults included, and the
        precision record) is saved beside the config for the record; it is not part of the comparison.
        """
        self.check_claim(config, resume=resume, overwrite=overwrite)
        saved = self.saved_config()
        if saved is not None and overwrite:
            logger.info("%s: --overwrite, removing the previous run", self.path)
            for child in (self.path / CONFIG, self.path / METRICS):
                child.unlink(missing_ok=True)
            shutil.rmtree(self.path / STATE, ignore_errors=True)
            saved = None
        if saved is None:
            self.path.mkdir(parents=True, exist_ok=True)
            record = {**to_dict(config), "digest": config.digest(), "resolved": dict(resolved or {})}
            atomic_write_text(self.path / CONFIG, yaml.safe_dump(record, sort_keys=False))

    def saved_resolved(self) -> dict[str, Any]:
        """The ``resolved`` record of ``config.yaml`` (settings, precision), or ``{}``."""
        path = self.path / CONFIG
        if not path.is_file():
            return {}
        return dict((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("resolved") or {})

    # -- metrics -------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record of ``metrics.jsonl``; torn or malformed lines are skipped with a warning."""
        return read_metrics_file(self.path / METRICS, self.position)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        records = [r for r in self.read_metrics() if r[self.position] < record[self.position]]
        self._write_metrics([*records, dict(record)])

    def truncate_metrics(self, position: int) -> None:
        """Drop records measured after ``position`` (the state on disk is older than them)."""
        records = self.read_metrics()
        kept = [r for r in records if r[self.position] <= position]
        if len(kept) != len(records) or not (self.path / METRICS).is_file():
            self._write_metrics(kept)

    def _write_metrics(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records)
        atomic_write_text(self.path / METRICS, text)

    # -- state ---------------------------------------------------------------------------
    def save_state(
        self,
        progress: Mapping[str, Any],
        deltas: Mapping[str, torch.Tensor],
        editor: Mapping[str, Any],
        instruments: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Write ``state/`` atomically: the old state stays until the new one is complete."""
        editor_tensors, editor_plain = split_state(editor)
        inst_tensors: dict[str, torch.Tensor] = {}
        inst_plain: dict[str, Any] = {}
        for name, state in instruments.items():
            tensors, plain = split_state(state, prefix=f"{name}/")
            inst_tensors.update(tensors)
            inst_plain[name] = plain
        with atomic_directory(self.path / STATE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in deltas.items()}, str(tmp / "deltas.safetensors"))
            save_file(editor_tensors, str(tmp / "editor.safetensors"))
            save_file(inst_tensors, str(tmp / "instruments.safetensors"))
            save_file({"torch_cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            (tmp / "state.json").write_text(
                json.dumps({"progress": dict(progress), "editor": editor_plain, "instruments": inst_plain}, indent=2, sort_keys=True)
            )

    def save_checkpoint_deltas(self, edits: int, deltas: Mapping[str, torch.Tensor]) -> Path:
        """Keep the cumulative delta at ``edits`` (atomically; a checkpoint written again is replaced)."""
        from safetensors.torch import save

        from editscope.storage import atomic_write_bytes

        path = self.path / CHECKPOINTS / f"{edits}.safetensors"
        path.parent.mkdir(exist_ok=True)
        atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in deltas.items()}, metadata={"edits": str(edits)}))
        return path

    def latest_deltas(self) -> dict[str, torch.Tensor]:
        """The cumulative delta of the last saved state alone (not the editor's or instruments' state)."""
        return load_file(str(self.path / STATE / "deltas.safetensors"))

    def checkpoint_deltas(self, edits: int) -> dict[str, torch.Tensor] | None:
        """The cumulative delta kept at ``edits``, or ``None`` where none was kept."""
        path = self.path / CHECKPOINTS / f"{edits}.safetensors"
        return load_file(str(path)) if path.is_file() else None

    def load_state(self) -> SavedState | None:
        folder = self.path / STATE
        if not (folder / "state.json").is_file():
            return None
        meta = json.loads((folder / "state.json").read_text())
        inst_tensors = load_file(str(folder / "instruments.safetensors"))
        instruments = {name: join_state(inst_tensors, plain, prefix=f"{name}/") for name, plain in meta["instruments"].items()}
        return SavedState(
            progress=meta["progress"],
            deltas=load_file(str(folder / "deltas.safetensors")),
            editor=join_state(load_file(str(folder / "editor.safetensors")), meta["editor"]),
            instruments=instruments,
            rng=load_file(str(folder / "rng.safetensors"))["torch_cpu"],
        )


def read_metrics_file(path: Path, position: str = "edits") -> list[dict[str, Any]]:
    """Complete records of a ``metrics.jsonl``, each with an int ``position`` key; a torn or malformed line is skipped with a warning."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get(position), int) or not isinstance(record.get("metrics"), dict):
                raise ValueError(f"not a {{{position}, wall_s, metrics}} record")
        except ValueError as exc:
            logger.warning("%s:%d: skipped a torn or malformed line (%s)", path, number, exc)
            continue
        records.append(record)
    return records

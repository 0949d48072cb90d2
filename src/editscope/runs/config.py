"""The run's configuration: one frozen dataclass, loaded from YAML and/or flags, saved as ``config.yaml``.

Every value is checked before any work starts: unknown keys (at the top level, in the editor's
hyperparameters and in each instrument's settings) get a "did you mean", editor and instrument
names must be registered, and the numbers must make sense.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from editscope.config import ConfigError, deep_merge, from_dict, load_yaml, to_dict

# Fields that say where a run is written or computed, not what it computes: left out of the digest.
PLACEMENT_FIELDS = ("out", "device_map", "keep_deltas")
# Fields added after run folders existed: left out of the digest while empty (their default), so
# those folders still resume.
LATER_FIELDS = ("ends_only", "points")
DEFAULT_INSTRUMENTS = ("weights", "activations", "subspace", "edit_quality", "perplexity")


@dataclass(frozen=True)
class RunConfig:
    """One sequential-editing run.

    Attributes:
        model: bundled model name (``smollm2-135m``), HF folder or hub id.
        editor: registered editor name (``editscope editors`` lists them).
        editor_config: hyperparameters over the editor's shipped defaults for ``model``.
        data: edit dataset file, or ``demo`` for the bundled demo set.
        data_format: force a dataset format; ``None`` detects it.
        known_only: keep only facts the model is annotated to know (rank 1; demo set only).
        edits: number of edits made (requests taken from the dataset after ordering).
        batch_size: requests per ``compute_delta`` call.
        seed: ordering seed; the dataset is shuffled with it (``shuffle``) before taking ``edits``.
        shuffle: shuffle the dataset; ``False`` keeps file order.
        every: a checkpoint (measure + save) every this many edits, rounded up to whole batches.
        log_points: if > 0, that many log-spaced checkpoints instead of ``every``.
        points: checkpoints at these edit counts instead of ``every`` and ``log_points`` (rounded up
            to batch ends; the first and last edit count are always measured).
        instruments: instrument names measured at each checkpoint.
        instrument_config: per-instrument settings, ``{name: {field: value}}``.
        ends_only: instruments measured only on the unedited model and at the last checkpoint (the
            costly ones whose reader needs only the two ends, e.g. ``downstream`` in ``editscope
            findings``); the others are measured at every checkpoint.
        out: the run folder.
        keep_deltas: keep the cumulative delta of the edited matrices at every checkpoint in
            ``checkpoints/<edits>.safetensors`` (the edited matrices' size each: 17.7 MB for MEMIT's five
            SmolLM2 down projections in float32), so the model at any checkpoint can be exported or loaded
            as ``RUN@EDITS``; ``False`` keeps only the latest (``state/``). Not part of the digest.
        device_map: where the model runs: ``None`` (CPU), a device (``cuda:0``), ``auto`` (spread
            over the visible GPUs by accelerate) or ``{module path: device}``; see
            :mod:`editscope.models.placement`. Not part of the digest: a run may resume elsewhere.
    """

    model: str = "smollm2-135m"
    editor: str = "memit"
    editor_config: dict[str, Any] = field(default_factory=dict)
    data: str = "demo"
    data_format: str | None = None
    known_only: bool = False
    edits: int = 100
    batch_size: int = 10
    seed: int = 0
    shuffle: bool = True
    every: int = 50
    log_points: int = 0
    points: tuple[int, ...] = ()
    instruments: tuple[str, ...] = DEFAULT_INSTRUMENTS
    instrument_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    ends_only: tuple[str, ...] = ()
    out: str = "runs/run"
    keep_deltas: bool = True
    device_map: str | dict[str, Any] | None = None

    placement_fields: ClassVar[tuple[str, ...]] = PLACEMENT_FIELDS

    def __post_init__(self) -> None:
        if self.device_map is not None and not isinstance(self.device_map, (str, Mapping)):
            raise ConfigError(f"run.device_map: expected a device, a strategy or {{module: device}}, got {self.device_map!r}")
        for name in ("edits", "batch_size", "every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name}: must be >= 1, got {getattr(self, name)}")
        if any(p < 1 for p in self.points) or list(self.points) != sorted(set(self.points)):
            raise ConfigError(f"run.points: positive edit counts in ascending order, got {list(self.points)}")
        if self.log_points < 0:
            raise ConfigError(f"run.log_points: must be >= 0, got {self.log_points}")
        if not isinstance(self.editor_config, Mapping):
            raise ConfigError("run.editor_config: expected a mapping of hyperparameters")
        if not isinstance(self.instrument_config, Mapping) or not all(isinstance(v, Mapping) for v in self.instrument_config.values()):
            raise ConfigError("run.instrument_config: expected {instrument: {field: value}}")
        if len(set(self.instruments)) != len(self.instruments):
            raise ConfigError(f"run.instruments: listed twice: {self.instruments}")
        stray = [name for name in self.ends_only if name not in self.instruments]
        if stray:
            raise ConfigError(f"run.ends_only: {', '.join(stray)} not among the run's instruments {list(self.instruments)}")

    def digest(self) -> str:
        """Hash of everything that decides the run's results (not where it is written)."""
        data = {k: v for k, v in to_dict(self).items() if k not in PLACEMENT_FIELDS and not (k in LATER_FIELDS and not v)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_run_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The config file's values (if any) with ``overrides`` (e.g. command-line flags) on top."""
    data = load_yaml(path) if path is not None else {}
    data = deep_merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    config = from_dict(RunConfig, data, where=str(path) if path else "run")
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Check names and nested settings against the registries (no model is loaded)."""
    from editscope.editors import EDITORS, build_editor
    from editscope.instruments import INSTRUMENTS

    EDITORS.get(config.editor)
    build_editor(config.editor, dict(config.editor_config), model_name=config.model)
    for name in config.instruments:
        INSTRUMENTS.get(name)
    for name, settings in config.instrument_config.items():
        if name not in config.instruments:
            raise ConfigError(f"run.instrument_config.{name}: not among the run's instruments {list(config.instruments)}")
        if INSTRUMENTS.get(name).config_class is None:
            raise ConfigError(f"run.instrument_config.{name}: this instrument takes no settings")
    for name in config.instruments:
        build_instrument(config, name)  # runs each instrument's own checks (e.g. its data folder) now


def build_instrument(config: RunConfig, name: str, defaults: Mapping[str, Any] | None = None) -> Any:
    """Instrument ``name`` with its settings from ``config`` over ``defaults`` (no model needed)."""
    from editscope.instruments import INSTRUMENTS

    cls = INSTRUMENTS.get(name)
    if cls.config_class is None:
        return cls()
    settings = {**(defaults or {}), **config.instrument_config.get(name, {})}
    return cls(from_dict(cls.config_class, settings, where=f"run.instrument_config.{name}"))

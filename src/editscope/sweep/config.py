"""A sweep: one base run config and a grid over any of its fields, expanded into named runs.

``SWEEP.yaml``::

    base:                     # RunConfig fields shared by every run (or a path to a run config YAML)
      model: smollm2-135m
      edits: 200
    grid:                     # every combination is one run; dotted keys reach nested settings
      editor: [memit, encore]
      seed: [0, 1]
      hparams.mom2_update_weight: [5000, 15000]   # ``hparams.`` = ``editor_config.`` (like ``--hp``)
    root: runs/sweep          # one run folder per run under here (shared storage on a cluster)
    resources: {num_cpus: 1, num_gpus: 0}
    max_retries: 2

Run folders are named after the grid values (``editor=memit,seed=0,...``), so a restarted sweep
finds its earlier runs. Every run config is validated before the first run starts.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from editscope.config import ConfigError, from_dict, load_yaml
from editscope.errors import EditscopeError
from editscope.registry import did_you_mean
from editscope.runs.config import RunConfig, load_run_config

# Short names for nested run settings, the same as the ``editscope run`` flags ``--hp`` / ``--inst``.
ALIASES = {"hparams": "editor_config", "inst": "instrument_config"}
_SAFE = re.compile(r"^[A-Za-z0-9._+\-]{1,40}$")


@dataclass(frozen=True)
class Resources:
    """What one run asks of a worker (Ray schedules runs by these).

    Attributes:
        num_cpus: CPU cores per run; also the run's torch thread count (at least 1). Runs that share
            a machine never use more threads in all than its cores (oversubscribed torch processes
            slow down many times over and lose bit-identity).
        num_gpus: GPUs per run (fractions share a GPU). A run uses its GPU through ``device_map``
            in the run config (e.g. ``base: {device_map: auto}``); Ray makes only the assigned GPUs visible.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_cpus <= 0:
            raise ConfigError(f"sweep.resources.num_cpus: must be > 0, got {self.num_cpus}")
        if self.num_gpus < 0:
            raise ConfigError(f"sweep.resources.num_gpus: must be >= 0, got {self.num_gpus}")

    @property
    def threads(self) -> int:
        """Torch threads per run."""
        return max(1, int(self.num_cpus))


@dataclass(frozen=True)
class SweepConfig:
    """A grid of sequential-editing runs.

    Attributes:
        base: run config fields shared by every run (``RunConfig``; no ``out``: folders come from ``root``).
        grid: ``{key: [values]}``; a key is a run config field or a dotted path into a nested
            setting (``editor_config.z.steps``, ``hparams.z.steps``, ``inst.perplexity.n_windows``).
        root: folder holding one run folder per run.
        resources: CPUs/GPUs per run.
        max_retries: times a failed run is started again (it resumes from its last checkpoint);
            config errors are not retried.
    """

    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    root: str = "runs/sweep"
    resources: Resources = field(default_factory=Resources)
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.base, Mapping):
            raise ConfigError("sweep.base: expected a mapping of run config fields (or a path to a run config file)")
        if "out" in self.base:
            raise ConfigError("sweep.base.out: run folders are named by the sweep; set sweep.root instead")
        if not isinstance(self.grid, Mapping):
            raise ConfigError("sweep.grid: expected {key: [values]}")
        for key, values in self.grid.items():
            check_grid_key(str(key))
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"sweep.grid.{key}: expected a non-empty list of values, got {values!r}")
        if self.max_retries < 0:
            raise ConfigError(f"sweep.max_retries: must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its folder name, the grid values that make it, its validated config."""

    name: str
    assignments: tuple[tuple[str, Any], ...]
    config: RunConfig


def check_grid_key(key: str) -> str:
    """The run config field a grid key sets; an unknown field gets a "did you mean"."""
    head = key.split(".", 1)[0]
    known = [f.name for f in fields(RunConfig) if f.name != "out"]
    head = ALIASES.get(head, head)
    if head == "out":
        raise ConfigError("sweep.grid.out: run folders are named by the sweep; set sweep.root instead")
    if head not in known:
        raise ConfigError(f"sweep.grid: unknown key {key!r}{did_you_mean(key.split('.', 1)[0], known + list(ALIASES))}; known: {', '.join(known)}")
    if "." in key and head not in ("editor_config", "instrument_config"):
        raise ConfigError(f"sweep.grid.{key}: {head} has no nested settings")
    return head


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read ``SWEEP.yaml``; a string ``base`` is a run config file, relative to the sweep file."""
    data = load_yaml(path)
    base = data.get("base")
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else Path(path).parent / base
        data["base"] = load_yaml(base_path)
    return from_dict(SweepConfig, data, where="sweep")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"`` (aliases resolved), creating mappings on the way."""
    head, *rest = key.split(".")
    parts = [ALIASES.get(head, head), *rest]
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, Mapping) else {}
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def slug(value: Any) -> str:
    """A folder-name-safe form of a grid value; lossy forms get a short hash so names stay unique."""
    text = value if isinstance(value, str) else repr(value) if not isinstance(value, (int, float, bool)) else str(value)
    if _SAFE.match(text):
        return text
    tail = text.rstrip("/").rsplit("/", 1)[-1] if isinstance(value, str) else text
    cleaned = re.sub(r"[^A-Za-z0-9._+\-]+", "-", tail).strip("-")[:32] or "value"
    return f"{cleaned}~{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def run_name(assignments: Sequence[tuple[str, Any]]) -> str:
    """``editor=memit,seed=0``: the grid values in grid order; ``base`` for an empty grid."""
    return ",".join(f"{key}={slug(value)}" for key, value in assignments) or "base"


def expand(sweep: SweepConfig) -> list[SweepRun]:
    """Every grid point as a validated run, in grid order (the first key varies slowest)."""
    keys = list(sweep.grid)
    runs: list[SweepRun] = []
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        assignments = tuple(zip(keys, values))
        name = run_name(assignments)
        data = copy.deepcopy(dict(sweep.base))
        for key, value in assignments:
            set_dotted(data, key, value)
        data["out"] = str(Path(sweep.root) / name)
        try:
            config = load_run_config(None, data)
        except EditscopeError as exc:  # config, registry and data errors, named with the run
            raise ConfigError(f"sweep run {name}: {exc}") from exc
        runs.append(SweepRun(name, assignments, config))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"sweep.grid: values listed twice give the same run {twice[0]!r}")
    return runs

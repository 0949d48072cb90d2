"""Run folders read for a report: name, saved config, checkpoint records, and the series in them.

A run may still be in progress: ``metrics.jsonl`` is read once (a torn or foreign line is skipped
with a warning by :func:`editscope.runs.store.read_metrics_file`) and the report shows what is there.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from editscope.errors import EditscopeError
from editscope.runs.collapse import Collapse, CollapseRule, collapse_point
from editscope.runs.store import CONFIG, METRICS, read_metrics_file

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"\.(\d+)\.")
_WEIGHT = re.compile(r"^weight/(.+\.\d+\..+)/(fro|delta_fro|spectral)$")
_SITE = re.compile(r"^(act|subspace)/layers\.(\d+)\.([a-z_]+)/([a-z_]+)$")


def layer_of(param: str) -> int | None:
    """Layer index in a parameter name (``model.layers.4.mlp.down_proj.weight`` -> 4)."""
    match = _LAYER.search(f".{param}.")
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ReportRun:
    """One run folder as the report sees it.

    Attributes:
        name: label in legends and tables (the folder name, disambiguated between runs).
        folder: the run folder.
        config: ``config.yaml`` as saved (empty when the folder has none).
        config_text: ``config.yaml``'s text, shown verbatim in the report.
        records: the complete checkpoint records of ``metrics.jsonl``, in edit order.
        collapse_rule: the thresholds of the run's collapse point (shared by a report's runs).
    """

    name: str
    folder: Path
    config: dict[str, Any]
    config_text: str
    records: tuple[dict[str, Any], ...]
    collapse_rule: CollapseRule = CollapseRule()

    @cached_property
    def collapse(self) -> Collapse | None:
        """The first checkpoint crossing ``collapse_rule``; ``None`` when none does."""
        return collapse_point(self.records, self.collapse_rule)

    @cached_property
    def keys(self) -> frozenset[str]:
        """Every metric key measured at some checkpoint."""
        return frozenset(k for r in self.records for k in r["metrics"])

    @property
    def edits_done(self) -> int:
        return int(self.records[-1]["edits"]) if self.records else 0

    @property
    def edits_planned(self) -> int | None:
        value = self.config.get("edits")
        return int(value) if isinstance(value, int) else None

    @property
    def in_progress(self) -> bool:
        planned = self.edits_planned
        return planned is not None and self.edits_done < planned

    def series(self, key: str, transform: Callable[[float], float] | None = None) -> tuple[list[int], list[float]]:
        """``(edits, values)`` of ``key`` over the checkpoints that measured it (non-finite values dropped)."""
        xs, ys = [], []
        for record in self.records:
            value = record["metrics"].get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs.append(int(record["edits"]))
                ys.append(float(transform(value) if transform else value))
        return xs, ys

    def relative_series(self, key: str) -> tuple[list[int], list[float]]:
        """Change of ``key`` against its first measurement, in percent."""
        xs, ys = self.series(key)
        if not ys or ys[0] == 0:
            return [], []
        return xs, [100.0 * (y / ys[0] - 1.0) for y in ys]

    def first_value(self, key: str) -> float | None:
        ys = self.series(key)[1]
        return ys[0] if ys else None

    def last_value(self, key: str) -> float | None:
        ys = self.series(key)[1]
        return ys[-1] if ys else None

    @cached_property
    def weight_params(self) -> dict[int, str]:
        """Layer -> the watched parameter name (``weight/<param>/fro`` keys)."""
        params = {}
        for key in self.keys:
            match = _WEIGHT.match(key)
            if match and match.group(2) == "fro":
                layer = layer_of(match.group(1))
                if layer is not None:
                    params[layer] = match.group(1)
        return dict(sorted(params.items()))

    def site_layers(self, family: str, site: str, statistic: str) -> list[int]:
        """Layers with an ``<family>/layers.<i>.<site>/<statistic>`` key, ascending."""
        layers = set()
        for key in self.keys:
            match = _SITE.match(key)
            if match and (match.group(1), match.group(3), match.group(4)) == (family, site, statistic):
                layers.add(int(match.group(2)))
        return sorted(layers)

    @cached_property
    def edited_layers(self) -> tuple[int, ...]:
        """Layers whose matrix moved (``delta_fro`` > 0 at some checkpoint); else the configured ones."""
        moved = sorted(
            layer
            for layer, param in self.weight_params.items()
            if any(v > 0 for v in self.series(f"weight/{param}/delta_fro")[1])
        )
        if moved:
            return tuple(moved)
        resolved = self.config.get("resolved") or {}
        for source in (
            ((resolved.get("instruments") or {}).get("weights") or {}).get("edited_layers"),
            (resolved.get("editor") or {}).get("layers"),
            (resolved.get("editor") or {}).get("layer"),
        ):
            if isinstance(source, int):
                return (source,)
            if isinstance(source, list) and source and all(isinstance(x, int) for x in source):
                return tuple(sorted(source))
        return ()


def mean_curve(curves: Sequence[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """The mean of several ``(xs, ys)`` series at the x values they all have."""
    curves = [c for c in curves if c[0]]
    common = sorted(set.intersection(*(set(xs) for xs, _ in curves))) if curves else []
    return common, [statistics.fmean(ys[xs.index(x)] for xs, ys in curves) for x in common]


def run_names(folders: Sequence[Path]) -> list[str]:
    """Folder names; runs sharing one get as many parent folders as tell them apart, then ``#n``."""
    resolved = [Path(f).resolve() for f in folders]
    names = [p.name for p in resolved]
    depth = 1
    while len(set(names)) < len(names) and depth < 4:
        depth += 1
        counts = Counter(names)
        names = ["/".join(p.parts[-depth:]) if counts[n] > 1 else n for p, n in zip(resolved, names)]
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def load_runs(folders: Sequence[str | Path], collapse_rule: CollapseRule = CollapseRule()) -> list[ReportRun]:
    """Read every run folder; a folder without ``metrics.jsonl`` is an error, an empty one a warning."""
    if not folders:
        raise EditscopeError("report: no run folders given")
    paths = [Path(f) for f in folders]
    missing = [str(p) for p in paths if not (p / METRICS).is_file()]
    if missing:
        raise EditscopeError(f"report: no {METRICS} in: {', '.join(missing)}")
    runs = []
    for name, path in zip(run_names(paths), paths):
        config_path = path / CONFIG
        text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
        try:
            config = yaml.safe_load(text) if text else {}
        except yaml.YAMLError as exc:
            logger.warning("%s: unreadable config (%s); reporting without it", config_path, exc)
            config = {}
        records = sorted(read_metrics_file(path / METRICS), key=lambda r: r["edits"])
        if not records:
            logger.warning("%s: no complete checkpoint yet; the run appears without curves", path)
        runs.append(ReportRun(name, path, config if isinstance(config, dict) else {}, text, tuple(records), collapse_rule))
    return runs

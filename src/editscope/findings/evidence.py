"""The quantities each claim is judged on, read from run folders' checkpoint records.

Post-training runs (``posttrain``) record ``weight/<param>/{fro,delta_fro,cross}`` per step; editing
runs record the instruments' keys per edit count. Nothing here decides anything: the verdicts are
:mod:`editscope.findings.rules`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from editscope.evaluation.tasks import TASKS
from editscope.report.data import ReportRun, mean_curve

_FRO = re.compile(r"^weight/(.+)/fro$")
_DOWN = re.compile(r"^downstream/([^/]+)/acc$")


@dataclass(frozen=True)
class PosttrainEvidence:
    """Norms of the matrices one post-training run updated, per recorded step.

    Attributes:
        mode: ``cpt``, ``full`` or ``lora``.
        steps: the recorded optimizer steps (the first is 0, the unedited model).
        mean_rel_change: per step, the mean over updated matrices of ‖W‖/‖W0‖ − 1.
        delta_sq: per step, Σ ‖ΔW‖² over updated matrices (the second-order part of ‖W‖² − ‖W0‖²).
        cross: per step, Σ 2⟨W0, ΔW⟩ over updated matrices (the first-order part).
        updated: matrices that moved (‖ΔW‖ > 0 at the last step).
        ended_above: updated matrices whose norm ended above its start.
        by_kind: ``{kind: (ended above, count)}`` with ``kind`` the name without its layer index.
        decay_alone: per step, the relative norm change weight decay alone makes to each decayed matrix
            (:func:`editscope.posttrain.loop.decay_alone`; ``None`` where it is not one factor: LoRA).
    """

    mode: str
    steps: tuple[int, ...]
    mean_rel_change: tuple[float, ...]
    delta_sq: tuple[float, ...]
    cross: tuple[float, ...]
    updated: int
    ended_above: int
    by_kind: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    decay_alone: tuple[float, ...] | None = None


def matrix_kind(param: str) -> str:
    """``mlp.down_proj.weight`` from ``model.layers.4.mlp.down_proj.weight`` (names without a layer kept whole)."""
    match = re.search(r"\.\d+\.(.+)$", param)
    return match.group(1) if match else param


def posttrain_evidence(mode: str, records: Sequence[Mapping[str, Any]], decay: Sequence[float] | None = None) -> PosttrainEvidence:
    """:class:`PosttrainEvidence` from a post-training run's ``metrics.jsonl`` records (step order);
    ``decay``: weight decay's own relative change at every step 0..steps, read at the recorded ones."""
    if len(records) < 2:
        raise ValueError(f"posttrain {mode}: needs at least two recorded steps, got {len(records)}")
    first, last = records[0]["metrics"], records[-1]["metrics"]
    names = [m.group(1) for k in first if (m := _FRO.match(k))]
    updated = [n for n in names if last.get(f"weight/{n}/delta_fro", 0.0) > 0 and first[f"weight/{n}/fro"] > 0]
    mean_rel, delta_sq, cross = [], [], []
    for record in records:
        metrics = record["metrics"]
        rel = [metrics[f"weight/{n}/fro"] / first[f"weight/{n}/fro"] - 1.0 for n in updated]
        mean_rel.append(statistics.fmean(rel) if rel else 0.0)
        delta_sq.append(sum(metrics[f"weight/{n}/delta_fro"] ** 2 for n in updated))
        cross.append(sum(metrics.get(f"weight/{n}/cross", math.nan) for n in updated))
    above = [n for n in updated if last[f"weight/{n}/fro"] > first[f"weight/{n}/fro"]]
    kinds: dict[str, list[int]] = {}
    for n in updated:
        counts = kinds.setdefault(matrix_kind(n), [0, 0])
        counts[0] += n in above
        counts[1] += 1
    return PosttrainEvidence(
        mode, tuple(int(r["step"]) for r in records), tuple(mean_rel), tuple(delta_sq), tuple(cross), len(updated), len(above),
        {k: (v[0], v[1]) for k, v in sorted(kinds.items())},
        tuple(decay[int(r["step"])] for r in records) if decay is not None else None,
    )  # fmt: skip


def chance_of(task: str) -> float:
    """Accuracy of a uniform guess on ``task`` (0.5 for a task editscope does not know)."""
    return 1.0 / len(TASKS[task].label_values) if task in TASKS else 0.5


@dataclass(frozen=True)
class TaskEvidence:
    """One downstream task of one editing run: unedited and final accuracy (NaN where the task was left
    out before editing), examples, chance level."""

    task: str
    acc_start: float
    acc_end: float
    n_examples: int
    chance: float

    @property
    def at_chance(self) -> bool:
        """The unedited accuracy is within two binomial standard errors of chance (nothing to lose)."""
        return abs(self.acc_start - self.chance) < 2.0 * math.sqrt(self.chance * (1 - self.chance) / self.n_examples)


@dataclass(frozen=True)
class EditEvidence:
    """What one sequential editing run measured, per checkpoint.

    Attributes:
        name: the run's name (its folder).
        editor: the editor.
        edits: edit counts of the checkpoints (the first is 0).
        edited_mean: mean ‖W‖_F of the edited matrices.
        unedited_max_change: the largest relative change of any unedited matrix at any checkpoint.
        resid_change_pct: mean residual-stream norm change against the unedited model, over the
            layers from the first edited one on (where an edit acts), percent.
        angle_deg: mean principal angle against the unedited model over the same layers, degrees.
        resid_by_layer: per layer of those (ascending), its own residual-norm change series, percent
            (claim 3 is judged layer by layer: the mean can rise while most layers, or the last, fall).
        efficacy: retained efficacy at the last checkpoint (NaN if not measured).
        ppl_change_pct: largest held-out perplexity change at the last checkpoint, percent.
        tasks: the downstream tasks measured.
    """

    name: str
    editor: str
    edits: tuple[int, ...]
    edited_mean: tuple[float, ...]
    unedited_max_change: float
    resid_change_pct: tuple[float, ...]
    angle_deg: tuple[float, ...]
    efficacy: float
    ppl_change_pct: float
    tasks: tuple[TaskEvidence, ...] = ()
    resid_by_layer: dict[int, tuple[float, ...]] = field(default_factory=dict)


def _part(run: ReportRun) -> str | None:
    return next((k.split("/")[1] for k in sorted(run.keys) if k.startswith("weight/") and k.endswith("/edited_fro_mean")), None)


def _site_means(run: ReportRun, key_of: Any, layers: list[int], relative: bool) -> tuple[float, ...]:
    """Per checkpoint, the mean over ``layers`` of a site statistic (relative: % change against step 0)."""
    return tuple(mean_curve([(run.relative_series if relative else run.series)(key_of(layer)) for layer in layers])[1])


def edit_evidence(run: ReportRun) -> EditEvidence:
    """:class:`EditEvidence` of a loaded editing run."""
    part = _part(run)
    edited_mean = tuple(run.series(f"weight/{part}/edited_fro_mean")[1]) if part else ()
    drift = run.series(f"weight/{part}/unedited_max_rel_change")[1] if part else []
    start = min(run.edited_layers, default=0)
    resid_layers = [i for i in run.site_layers("act", "resid", "norm") if i >= start]
    resid = _site_means(run, lambda i: f"act/layers.{i}.resid/norm", resid_layers, True)
    by_layer = {i: tuple(run.relative_series(f"act/layers.{i}.resid/norm")[1]) for i in resid_layers}
    angle = _site_means(
        run, lambda i: f"subspace/layers.{i}.resid/angle_mean", [i for i in run.site_layers("subspace", "resid", "angle_mean") if i >= start], False
    )  # fmt: skip
    last = run.records[-1]["metrics"] if run.records else {}
    first = run.records[0]["metrics"] if run.records else {}
    ppl = [100.0 * (last[k] / first[k] - 1.0) for k in first if k.startswith("ppl/") and k in last and first[k]]
    settings = ((run.config.get("resolved") or {}).get("instruments") or {}).get("downstream") or {}
    n = int(settings.get("n_examples") or 100)
    tasks = tuple(
        TaskEvidence(task, first[key], last[key], n, chance_of(task))
        for key in sorted(first)
        if (m := _DOWN.match(key)) and key in last and (task := m.group(1))
    )
    return EditEvidence(
        name=run.name, editor=str(run.config.get("editor", run.name)), edits=tuple(int(r["edits"]) for r in run.records),
        edited_mean=edited_mean, unedited_max_change=max(drift, default=math.nan), resid_change_pct=resid, angle_deg=angle,
        efficacy=float(last.get("edit/efficacy", math.nan)), ppl_change_pct=max(ppl, default=math.nan), tasks=tasks,
        resid_by_layer={i: series for i, series in by_layer.items() if series},
    )  # fmt: skip


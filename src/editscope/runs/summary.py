"""One row of headline figures per run, from its first and last checkpoint (``metrics.jsonl``).

The figures are the research's findings in numbers: how much the edited matrices grew, whether
the unedited ones stayed put (balance), how activations moved, how well the edits hold, and what
happened to general ability.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from editscope.runs.collapse import CollapseRule, collapse_point
from editscope.runs.store import read_metrics_file

_FRO = re.compile(r"^weight/(.+)/fro$")
_RESID = re.compile(r"^act/layers\.(\d+)\.resid/norm$")
_ANGLE = re.compile(r"^subspace/layers\.(\d+)\.resid/angle_mean$")
_CKA = re.compile(r"^subspace/layers\.(\d+)\.resid/cka$")
_DOWN = re.compile(r"^downstream/([^/]+)/acc$")
AGE_EFFICACY = re.compile(r"^edit/age/(\d+)(-\d+|\+)/efficacy$")
"""``edit/age/<bucket>/efficacy``: group 1 the bucket's lower edge, group 2 the rest of its label."""

COLUMNS: dict[str, str] = {
    "edits": "edits",
    "edited_fro_growth_pct": "edited ||W|| growth %",
    "delta_fro_mean": "mean ||dW||",
    "unedited_max_change_pct": "unedited max change %",
    "balance": "balance (0 -> end)",
    "edited_cond": "edited cond (0 -> end)",
    "resid_norm_change_pct": "resid norm change %",
    "subspace_angle_deg": "subspace angle deg",
    "cka_min": "min CKA",
    "efficacy": "efficacy",
    "oldest_efficacy": "efficacy, oldest edits",
    "edit_score": "edit score",
    "downstream_acc_change_pts": "downstream acc change pts",
    "ppl_change_pct": "ppl change %",
    "fluency_x100": "fluency (x100)",
    "collapse_at": "collapse at (edits)",
}


def _pct(new: float, old: float) -> float:
    return 100.0 * (new / old - 1.0) if old else math.nan


def _mean_over(metrics: Mapping[str, float], pattern: re.Pattern[str]) -> float:
    values = [v for k, v in metrics.items() if pattern.match(k)]
    return statistics.fmean(values) if values else math.nan


def summarize_records(records: Sequence[Mapping[str, Any]], rule: CollapseRule = CollapseRule()) -> dict[str, Any]:
    """Headline figures between the first and the last record of one run (NaN where not measured);
    the collapse point by ``rule`` ("none" when no checkpoint crosses it)."""
    if not records:
        return {"edits": 0}
    first, last = records[0]["metrics"], records[-1]["metrics"]
    row: dict[str, Any] = {"edits": records[-1]["edits"]}
    part = next((k.split("/")[1] for k in last if k.endswith("/balance") and k.startswith("weight/")), None)
    if part is not None:
        row["edited_fro_growth_pct"] = _pct(last[f"weight/{part}/edited_fro_mean"], first[f"weight/{part}/edited_fro_mean"])
        row["unedited_max_change_pct"] = 100.0 * last.get(f"weight/{part}/unedited_max_rel_change", math.nan)
        row["balance"] = f"{first[f'weight/{part}/balance']:.4f} -> {last[f'weight/{part}/balance']:.4f}"
        cond = f"weight/{part}/edited_cond_mean"
        if cond in first and cond in last:
            row["edited_cond"] = f"{first[cond]:.4g} -> {last[cond]:.4g}"
    deltas = [v for k, v in last.items() if k.endswith("/delta_fro") and v > 0]
    row["delta_fro_mean"] = statistics.fmean(deltas) if deltas else 0.0
    resid_first = {k: v for k, v in first.items() if _RESID.match(k)}
    if resid_first:
        row["resid_norm_change_pct"] = statistics.fmean(_pct(last[k], v) for k, v in resid_first.items() if k in last)
    row["subspace_angle_deg"] = _mean_over(last, _ANGLE)
    ckas = [v for k, v in last.items() if _CKA.match(k)]
    row["cka_min"] = min(ckas) if ckas else math.nan
    row["efficacy"] = last.get("edit/efficacy", math.nan)
    row["oldest_efficacy"] = oldest_bucket_efficacy(last)
    row["edit_score"] = last.get("edit/score", math.nan)
    changes = [100.0 * (last[k] - v) for k, v in first.items() if _DOWN.match(k) and k in last]
    # accuracies are fractions of a few hundred examples: rounding drops float noise such as -9e-16
    row["downstream_acc_change_pts"] = round(statistics.fmean(changes), 9) + 0.0 if changes else math.nan
    ppl = [k for k in first if k.startswith("ppl/") and k in last]
    row["ppl_change_pct"] = statistics.fmean(_pct(last[k], first[k]) for k in ppl) if ppl else math.nan
    row["fluency_x100"] = fluency_x100(last.get("edit/entropy", math.nan))
    collapse = collapse_point(records, rule)
    row["collapse_at"] = collapse.edits if collapse else "none"
    row["collapse_reason"] = collapse.reason if collapse else ""
    return row


def oldest_bucket_efficacy(metrics: Mapping[str, float]) -> float:
    """Efficacy of the oldest edits (the highest ``edit/age/<bucket>`` present); NaN without buckets."""
    buckets = [(int(m.group(1)), v) for k, v in metrics.items() if (m := AGE_EFFICACY.match(k))]
    return max(buckets)[1] if buckets else math.nan


def fluency_x100(entropy_bits: float) -> float:
    """Generation n-gram entropy on the papers' scale: bits x 100 (kmeng01/memit ``summarize.py``
    multiplies every metric by 100, so a fluency of 622 in their tables is 6.22 bits here)."""
    return 100.0 * entropy_bits


def records_until(records: Sequence[Mapping[str, Any]], at: int | None, where: str = "run") -> list[Mapping[str, Any]]:
    """The records up to the checkpoint at ``at`` edits (``None``: all of them), so a summary reads the run as it
    stood there; a count that is not a checkpoint is refused with the ones there are."""
    if at is None:
        return list(records)
    counts = [int(r["edits"]) for r in records]
    if at not in counts:
        from editscope.config import ConfigError

        raise ConfigError(f"--at {at}: {where} has no checkpoint at {at} edits; its checkpoints: {', '.join(map(str, counts))}")
    return [r for r in records if int(r["edits"]) <= at]


def summarize_run(folder: str | Path, rule: CollapseRule = CollapseRule(), at: int | None = None) -> dict[str, Any]:
    """:func:`summarize_records` of the run in ``folder``, with its name; ``at``: as it stood at that checkpoint."""
    folder = Path(folder)
    records = records_until(read_metrics_file(folder / "metrics.jsonl"), at, str(folder))
    return {"run": folder.name, **summarize_records(records, rule)}


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)

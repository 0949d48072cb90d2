"""The verdict on each claim of the research, by rules fixed here before any number is seen.

Every rule reads only the evidence of :mod:`editscope.findings.evidence` and returns a
:class:`Verdict`: ``holds``, ``does not hold`` or ``inconclusive``, with the reason in numbers. The
thresholds are :class:`Rules` fields; ``findings.html`` states each rule with them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from editscope.findings.evidence import EditEvidence, PosttrainEvidence, TaskEvidence

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"

CLAIMS: dict[int, str] = {
    1: "Post-training (continued pre-training, full fine-tuning, LoRA) increases the Frobenius norm of the updated matrices.",
    2: "Sequential localized editing grows the norm of each edited matrix with successive edits while the unedited "
    "matrices stay put: the balance is lost.",
    3: "Internal activation norms decrease, and the activations move into other subspaces than the unedited model's.",
    4: "Downstream ability degrades; norm control (ENCORE) keeps edits working without that decay.",
}


@dataclass(frozen=True)
class Rules:
    """Thresholds of the verdicts.

    Attributes:
        rising_share: a series "rose" when it went up at least at this share of checkpoint intervals.
        matrices_share: claim 1 also needs this share of the updated matrices to end above their start.
        unedited_tolerance: claim 2: the largest relative change allowed to any unedited matrix (0.1%).
        angle_deg: claim 3: the mean principal angle the activations must reach, degrees.
        working_efficacy: claim 4: retained efficacy at which a norm-controlled editor's edits still work.
        z: standard errors a downstream change must exceed to count (two: about 95%).
    """

    rising_share: float = 0.9
    matrices_share: float = 0.9
    unedited_tolerance: float = 1e-3
    angle_deg: float = 1.0
    working_efficacy: float = 0.8
    z: float = 2.0

    def describe(self, claim: int) -> str:
        """The rule of ``claim`` in words, with its thresholds."""
        share = f"{100 * self.rising_share:g}%"
        return {
            1: f"holds for a mode when the mean relative norm change of its updated matrices rose at >= {share} of the recorded "
            f"intervals and >= {100 * self.matrices_share:g}% of those matrices ended above their start; does not hold when the "
            "final mean change is <= 0 or fewer than half ended above; inconclusive otherwise.",
            2: f"holds for an editor when the mean norm of its edited matrices rose at >= {share} of the checkpoint intervals and "
            f"no unedited matrix moved by >= {100 * self.unedited_tolerance:g}%; does not hold when the edited mean ended at or "
            "below its start; inconclusive otherwise.",
            3: "reads the residual stream at every layer from the first edited one to the last: the activations an edit "
            "can reach (those below it are unchanged by construction); the paper reports 'intermediate activation vectors' "
            "without a layer list in the sources we could read, and the mean over layers can rise while most layers, or "
            f"the last, fall, so each layer is judged on its own. A layer fell when its norm was below the unedited model's "
            f"at >= {share} of the checkpoints after the first. Holds for an editor when the norm fell at more than half of "
            f"those layers and the mean principal angle ended at >= {self.angle_deg:g} degrees; does not hold when the norm "
            f"ended above the unedited model's at more than half of them or the angle below {self.angle_deg / 10:g} "
            "degrees; inconclusive otherwise.",
            4: f"tasks whose unedited accuracy is within {self.z:g} standard errors of chance are left out. An editor degrades "
            f"when its mean accuracy change over the other tasks is below -{self.z:g} standard errors. The claim holds when "
            f"some editor without norm control degrades and ENCORE neither degrades nor drops below {self.working_efficacy:g} "
            "retained efficacy; it does not hold when no editor degrades or ENCORE degrades too; inconclusive without "
            "informative tasks or without ENCORE.",
        }[claim]


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict for one subject (a post-training mode, an editor, or the study as a whole)."""

    claim: int
    subject: str
    verdict: str
    reason: str


def rose_share(values: Sequence[float]) -> float:
    """Share of consecutive intervals over which ``values`` went up (NaN with fewer than two values)."""
    steps = list(zip(values, values[1:]))
    return sum(b > a for a, b in steps) / len(steps) if steps else math.nan


def claim1(evidence: PosttrainEvidence, rules: Rules = Rules()) -> Verdict:
    rose = rose_share(evidence.mean_rel_change)
    final = evidence.mean_rel_change[-1]
    above = evidence.ended_above / evidence.updated if evidence.updated else math.nan
    reason = (
        f"mean relative change {final:+.3g} at step {evidence.steps[-1]}, rose at {rose:.0%} of intervals; "
        f"{evidence.ended_above}/{evidence.updated} updated matrices ended above their start"
    )
    if not evidence.updated or math.isnan(rose):
        return Verdict(1, evidence.mode, UNSURE, "no matrix moved")
    if rose >= rules.rising_share and above >= rules.matrices_share:
        return Verdict(1, evidence.mode, HOLDS, reason)
    if final <= 0 or above < 0.5:
        return Verdict(1, evidence.mode, FAILS, reason)
    return Verdict(1, evidence.mode, UNSURE, reason)


def trend_step(evidence: PosttrainEvidence) -> int | None:
    """The first recorded step from which the mean relative change stays positive and never falls over at
    least two records; ``None`` if there is none (a last record alone is no trend)."""
    values = evidence.mean_rel_change
    for i in range(1, len(values) - 1):
        tail = values[i:]
        if all(v > 0 for v in tail) and all(b >= a for a, b in zip(tail, tail[1:])):
            return evidence.steps[i]
    return None


def claim2(evidence: EditEvidence, rules: Rules = Rules()) -> Verdict:
    series = evidence.edited_mean
    if len(series) < 2:
        return Verdict(2, evidence.name, UNSURE, "fewer than two checkpoints with edited-matrix norms")
    rose = rose_share(series)
    growth = 100.0 * (series[-1] / series[0] - 1.0)
    drift = evidence.unedited_max_change
    reason = f"edited mean norm {growth:+.3g}% after {evidence.edits[-1]} edits, rose at {rose:.0%} of intervals; largest unedited change {100 * drift:.2g}%"
    if series[-1] <= series[0]:
        return Verdict(2, evidence.name, FAILS, reason)
    if rose >= rules.rising_share and drift < rules.unedited_tolerance:
        return Verdict(2, evidence.name, HOLDS, reason)
    return Verdict(2, evidence.name, UNSURE, reason)


def fell(series: Sequence[float], share: float) -> bool:
    """A residual-norm change series (its first entry the unedited model's 0) was below zero at ``share`` or more of
    the checkpoints after the first."""
    after = series[1:]
    return bool(after) and sum(v < 0 for v in after) / len(after) >= share


def layer_changes(evidence: EditEvidence) -> dict[int, tuple[float, ...]]:
    """The per-layer series claim 3 reads; runs recorded without them fall back to the mean over layers as one."""
    return dict(evidence.resid_by_layer) or ({-1: evidence.resid_change_pct} if evidence.resid_change_pct else {})


def claim3(evidence: EditEvidence, rules: Rules = Rules()) -> Verdict:
    """Layer by layer (:meth:`Rules.describe`): the norm fell at a majority of the layers read and the angle grew."""
    layers, angle = layer_changes(evidence), evidence.angle_deg
    if not layers or not angle or len(evidence.resid_change_pct) < 2:
        return Verdict(3, evidence.name, UNSURE, "activation norms or subspace angles not measured after editing")
    down = [i for i, series in layers.items() if fell(series, rules.rising_share)]
    up = [i for i, series in layers.items() if series[-1] > 0]
    mean = evidence.resid_change_pct[-1]
    if -1 in layers:
        where = f"mean over layers {mean:+.3g}% at the end"
    else:
        lowest = min(layers, key=lambda i: layers[i][-1])
        last = max(layers)
        where = (f"fell at {len(down)}/{len(layers)} layers, ended above at {len(up)}/{len(layers)}; last layer ({last}) "
                 f"{layers[last][-1]:+.3g}%, largest fall layer {lowest} {layers[lowest][-1]:+.3g}%, mean over layers {mean:+.3g}%")
    reason = f"residual norm {where}; mean principal angle {angle[-1]:.3g} deg"
    if 2 * len(down) > len(layers) and angle[-1] >= rules.angle_deg:
        return Verdict(3, evidence.name, HOLDS, reason)
    if 2 * len(up) > len(layers) or angle[-1] < rules.angle_deg / 10:
        return Verdict(3, evidence.name, FAILS, reason)
    return Verdict(3, evidence.name, UNSURE, reason)


def informative(tasks: Sequence[TaskEvidence]) -> list[TaskEvidence]:
    return [t for t in tasks if not t.at_chance]


def downstream_change(tasks: Sequence[TaskEvidence]) -> tuple[float, float]:
    """Mean accuracy change over ``tasks`` and its standard error (independent binomial estimates), points."""
    change = statistics.fmean(100.0 * (t.acc_end - t.acc_start) for t in tasks)
    variance = sum(t.acc_start * (1 - t.acc_start) / t.n_examples + t.acc_end * (1 - t.acc_end) / t.n_examples for t in tasks)
    return change, 100.0 * math.sqrt(variance) / len(tasks)


def degrades(evidence: EditEvidence, rules: Rules = Rules()) -> Verdict:
    """Claim 4's part for one editor: did its downstream accuracy fall beyond noise?"""
    tasks = informative(evidence.tasks)
    if not tasks:
        reason = "no downstream task above chance on the unedited model" if evidence.tasks else "downstream not measured"
        return Verdict(4, evidence.name, UNSURE, reason)
    change, se = downstream_change(tasks)
    names = ",".join(t.task for t in tasks)
    reason = f"accuracy {change:+.3g} pts (SE {se:.2g}) on {names}; efficacy {evidence.efficacy:.2f}; ppl {evidence.ppl_change_pct:+.3g}%"
    return Verdict(4, evidence.name, "degrades" if change < -rules.z * se else "keeps", reason)


def claim4(runs: Sequence[EditEvidence], rules: Rules = Rules()) -> Verdict:
    parts = {run.editor: (run, degrades(run, rules)) for run in runs}
    controlled = parts.get("encore")
    others = [(run, v) for editor, (run, v) in parts.items() if editor != "encore" and v.verdict != UNSURE]
    if controlled is None or controlled[1].verdict == UNSURE or not others:
        return Verdict(4, "study", UNSURE, "needs ENCORE and another editor measured on tasks above chance")
    degraded = [run.name for run, v in others if v.verdict == "degrades"]
    encore_run, encore_verdict = controlled
    working = encore_run.efficacy >= rules.working_efficacy
    reason = f"degraded: {', '.join(degraded) or 'none'}; ENCORE {encore_verdict.verdict}, retained efficacy {encore_run.efficacy:.2f}"
    if degraded and encore_verdict.verdict == "keeps" and working:
        return Verdict(4, "study", HOLDS, reason)
    if not degraded or encore_verdict.verdict == "degrades":
        return Verdict(4, "study", FAILS, reason)
    return Verdict(4, "study", UNSURE, reason)

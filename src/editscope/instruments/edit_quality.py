"""Edit quality as the edits go: over every edit so far (retention) and over the latest batch.

Keys (retention set: at most ``retention_sample`` edited requests, evenly spaced over the order):
  ``edit/efficacy``       P(target_new) > P(target_true) on the edit prompt
  ``edit/paraphrase``     the same on paraphrase prompts
  ``edit/neighborhood``   neighbor prompts whose preference between their own answer and the edit's
                          target_new is the same as the unedited model's (cached at the baseline)
  ``edit/neighborhood_raw`` CounterFact's neighborhood score: P(answer) > P(target_new)
  ``edit/score``          harmonic mean of efficacy, paraphrase and neighborhood
  ``edit/top1``           teacher-forced token accuracy of target_new (zsRE's top-1)
  ``edit/latest/<efficacy|paraphrase|neighborhood|score>`` the same over the latest batch only
  ``edit/age/<bucket>/<efficacy|paraphrase|n>`` retention by edit age: the retention set and the latest
                          batch grouped by how many edits were applied after each one (``<bucket>`` is
                          ``<lo>-<hi>``, edits ago in [lo, hi), or ``<lo>+`` for the oldest)
  ``edit/entropy``        n-gram entropy of sampled text from a fixed prompt set (fluency; also at step 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.evaluation.edit_quality import (
    Pair,
    chosen_neighbors,
    harmonic_mean,
    neighbor_pairs,
    ngram_entropy,
    prefers,
    sample_continuations,
    score_pairs,
    spaced_sample,
)
from editscope.instruments.base import Instrument, register_instrument
from editscope.types import EditRequest


@dataclass(frozen=True)
class EditQualityConfig:
    """How much of the edit history is scored at each checkpoint.

    Attributes:
        retention_sample: at most this many edited requests, evenly spaced over the edit order,
            are scored for retention (count). 100 resolves a 10-point change in efficacy.
        paraphrases_per_request: paraphrase prompts scored per request (count).
        neighbors_per_request: neighborhood prompts per request, drawn with ``seed`` (count).
        generation_prompts: open prompts for the entropy figure, evenly spaced over the planned
            requests and fixed for the whole run (count; 0 turns the figure off).
        generation_tokens: tokens sampled per prompt (ROME samples 100; fewer keep checkpoints cheap).
        seed: seed of the neighbor choice and the sampling.
        batch_size: scoring batch size (rows).
        age_edges: bucket edges of retention by age, in edits applied since (ascending; the first
            bucket is [0, edges[0]), the last [edges[-1], inf)). The latest batch has age 0.
    """

    retention_sample: int = 100
    paraphrases_per_request: int = 2
    neighbors_per_request: int = 3
    generation_prompts: int = 8
    generation_tokens: int = 40
    seed: int = 0
    batch_size: int = 32
    age_edges: tuple[int, ...] = (10, 30, 100, 300, 1000, 3000, 10000)

    def __post_init__(self) -> None:
        edges = list(self.age_edges)
        if not edges or edges[0] <= 0 or edges != sorted(set(edges)):
            raise ConfigError(f"edit_quality.age_edges: positive and strictly ascending, got {edges}")


@register_instrument("edit_quality")
class EditQuality(Instrument):
    """Efficacy, paraphrase, neighborhood, their harmonic mean, top-1 and fluency of the edits so far."""

    config_class = EditQualityConfig

    def __init__(self, config: EditQualityConfig | None = None) -> None:
        self.config = config or EditQualityConfig()
        self._planned: list[EditRequest] = []
        self._edited: list[EditRequest] = []
        self._applied_by: list[int] = []  # per edited request: edits applied when its batch was done
        self._latest: list[EditRequest] = []
        self._unedited_prefers: dict[tuple[str, str, str], bool] = {}  # (prompt, answer, target_new)
        self._baselined = False

    def plan(self, requests: Sequence[EditRequest]) -> None:
        self._planned = list(requests)
        self._edited, self._latest, self._applied_by = [], [], []

    def observe(self, requests: Sequence[EditRequest]) -> None:
        self._edited.extend(requests)
        self._applied_by.extend([len(self._edited)] * len(requests))
        self._latest = list(requests)

    def _neighbors(self, request: EditRequest):
        return chosen_neighbors(request, self.config.neighbors_per_request, self.config.seed)

    def baseline(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        pairs = [p for r in self._planned for p in neighbor_pairs(r, self._neighbors(r))]
        scores = score_pairs(model, tokenizer, pairs, batch_size=self.config.batch_size)
        self._unedited_prefers = {
            (n.prompt, n.answer, r.target_new): prefers(scores, n.prompt, n.answer, r.target_new)
            for r in self._planned
            for n in self._neighbors(r)
        }
        self._baselined = True

    def _paraphrases(self, request: EditRequest) -> tuple[str, ...]:
        return request.paraphrase_prompts[: self.config.paraphrases_per_request]

    def _pairs(self, requests: Sequence[EditRequest]) -> list[Pair]:
        pairs: list[Pair] = []
        for r in requests:
            for prompt in (r.text, *self._paraphrases(r)):
                pairs += [(prompt, r.target_new), (prompt, r.target_true)]
            pairs += neighbor_pairs(r, self._neighbors(r))
        return pairs

    def _scores(self, requests: Sequence[EditRequest], scores: dict[Pair, Any]) -> dict[str, float]:
        efficacy = [prefers(scores, r.text, r.target_new, r.target_true) for r in requests]
        para = [prefers(scores, p, r.target_new, r.target_true) for r in requests for p in self._paraphrases(r)]
        kept, raw = [], []
        for r in requests:
            for n in self._neighbors(r):
                now = prefers(scores, n.prompt, n.answer, r.target_new)
                raw.append(now)
                kept.append(now == self._unedited_prefers[(n.prompt, n.answer, r.target_new)])
        values = {
            "efficacy": _mean(efficacy),
            "paraphrase": _mean(para),
            "neighborhood": _mean(kept),
            "neighborhood_raw": _mean(raw),
        }
        present = [values[k] for k in ("efficacy", "paraphrase", "neighborhood") if values[k] == values[k]]
        values["score"] = harmonic_mean(present)
        top1 = [scores[(r.text, r.target_new)] for r in requests]
        values["top1"] = sum(s.n_correct for s in top1) / sum(s.n_tokens for s in top1)
        return values

    def measure(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        if not self._baselined:
            raise RuntimeError("edit_quality: baseline() must run on the unedited model first")
        metrics: dict[str, float] = {}
        if self._edited:
            order = spaced_sample(range(len(self._edited)), self.config.retention_sample)
            retained = [self._edited[i] for i in order]
            scores = score_pairs(
                model, tokenizer, self._pairs(retained) + self._pairs(self._latest), batch_size=self.config.batch_size
            )
            metrics.update({f"edit/{k}": v for k, v in self._scores(retained, scores).items()})
            latest = self._scores(self._latest, scores)
            metrics.update({f"edit/latest/{k}": latest[k] for k in ("efficacy", "paraphrase", "neighborhood", "score")})
            metrics["edit/retention_n"] = float(len(retained))
            metrics.update(self._by_age(order, scores))
        prompts = [p for r in spaced_sample(self._planned, self.config.generation_prompts) for p in r.generation_prompts[:1]]
        if prompts and self.config.generation_prompts > 0:
            texts = sample_continuations(
                model, tokenizer, prompts, max_new_tokens=self.config.generation_tokens, seed=self.config.seed
            )
            metrics["edit/entropy"] = sum(ngram_entropy(t) for t in texts) / len(texts)
        return {k: v for k, v in metrics.items() if v == v}  # NaN (no prompts of a kind) is left out

    def _by_age(self, order: Sequence[int], scores: dict[Pair, Any]) -> dict[str, float]:
        """Efficacy and paraphrase of the scored edits (retention set and latest batch) per age bucket."""
        done = len(self._edited)
        latest = range(done - len(self._latest), done)
        groups: dict[str, list[EditRequest]] = {}
        for i in sorted({*order, *latest}):
            groups.setdefault(age_bucket(done - self._applied_by[i], self.config.age_edges), []).append(self._edited[i])
        metrics = {}
        for bucket, requests in groups.items():
            metrics[f"edit/age/{bucket}/efficacy"] = _mean(
                [prefers(scores, r.text, r.target_new, r.target_true) for r in requests]
            )
            para = [prefers(scores, p, r.target_new, r.target_true) for r in requests for p in self._paraphrases(r)]
            metrics[f"edit/age/{bucket}/paraphrase"] = _mean(para)
            metrics[f"edit/age/{bucket}/n"] = float(len(requests))
        return metrics


def age_bucket(age: int, edges: Sequence[int]) -> str:
    """``"<lo>-<hi>"`` for the bucket [lo, hi) of ``edges`` holding ``age`` (edits ago); ``"<lo>+"`` past the last."""
    lo = 0
    for hi in edges:
        if age < hi:
            return f"{lo}-{hi}"
        lo = hi
    return f"{lo}+"


def _mean(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")

"""Edit-quality figures over many requests: the pieces the ``edit_quality`` instrument combines.

* Comparison scores in CounterFact's form (Meng et al. 2022, Sec. 4.2): efficacy, paraphrase and
  neighborhood are fractions of prompts on which one continuation beats another.
* The edit score is their harmonic mean (ROME/MEMIT's "Score", Meng et al. 2023, Table 1).
* Fluency is the n-gram entropy of generated text (ROME, Appendix: a weighted average of bi- and
  tri-gram entropies, weights 2/3 and 4/3), which falls when an edited model starts to repeat itself.
* zsRE's top-1 accuracy is the teacher-forced token accuracy of the new target (Mitchell et al. 2022).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.evaluation.scoring import TargetScore, score_targets
from editscope.models.placement import input_device
from editscope.precision import seeded
from editscope.tokens import left_padded_batch, pad_id
from editscope.types import EditRequest, NeighborhoodPrompt

T = TypeVar("T")

Pair = tuple[str, str]

NGRAM_WEIGHTS = {2: 2 / 3, 3: 4 / 3}
_WORD = re.compile(r"\w+|[^\w\s]")


def score_pairs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Iterable[Pair], *, batch_size: int = 32
) -> dict[Pair, TargetScore]:
    """Score every distinct (prompt, target) pair once."""
    unique = sorted(set(pairs))
    if not unique:
        return {}
    scores = score_targets(model, tokenizer, [p for p, _ in unique], [t for _, t in unique], batch_size=batch_size)
    return dict(zip(unique, scores))


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0, NaN if any is NaN or there are none."""
    if not values or any(math.isnan(v) for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def ngram_entropy(text: str, weights: dict[int, float] = NGRAM_WEIGHTS) -> float:
    """Weighted mean over n of the entropy (bits) of ``text``'s word n-gram frequencies (ROME's fluency)."""
    words = _WORD.findall(text.lower())
    entropies = []
    for n, weight in weights.items():
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        entropies.append(weight * h)
    return sum(entropies) / len(entropies)


@torch.no_grad()
def sample_continuations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, max_new_tokens: int, seed: int
) -> list[str]:
    """Top-5 sampled continuations of ``prompts`` (as ROME's fluency test), from a forked, seeded RNG."""
    if not prompts:
        return []
    device = input_device(model)
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    ids, mask, _ = left_padded_batch(encoded, pad_id(tokenizer), device)
    with seeded(device, seed):
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, top_k=5, max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer),
        )
    return [tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]


def spaced_sample(items: Sequence[T], n: int) -> list[T]:
    """At most ``n`` items evenly spaced over ``items`` (first and last included): early and late edits alike."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def chosen_neighbors(request: EditRequest, k: int, seed: int) -> list[NeighborhoodPrompt]:
    """``k`` of the request's neighborhood prompts, drawn with a per-request seed (stable across runs)."""
    if len(request.neighborhood) <= k:
        return list(request.neighborhood)
    return random.Random(f"{seed}/{request.id}").sample(list(request.neighborhood), k)


def neighbor_pairs(request: EditRequest, neighbors: Sequence[NeighborhoodPrompt]) -> list[Pair]:
    return [(n.prompt, t) for n in neighbors for t in (n.answer, request.target_new)]


def prefers(scores: dict[Pair, TargetScore], prompt: str, a: str, b: str) -> bool:
    """Whether target ``a`` is more likely than ``b`` after ``prompt`` per token: CounterFact's
    length-normalized comparison (kmeng01/memit ``test_batch_prediction``: mean NLL per target token)."""
    return scores[(prompt, a)].mean_logprob > scores[(prompt, b)].mean_logprob

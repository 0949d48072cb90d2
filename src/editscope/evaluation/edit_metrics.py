"""Edit-quality scores in CounterFact's comparison form (Meng et al. 2022, section 4.2).

efficacy: P(target_new) > P(target_true) on the edit prompt; paraphrase: the same on paraphrases;
neighborhood: neighbors still prefer their own answer over target_new. Each is the fraction of
prompts for which it holds. As kmeng01/memit's ``eval_utils_counterfact.py`` scores them, a
target's probability is its length-normalized one: the mean log-probability of its tokens (a sum
would favour the shorter target).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.evaluation.scoring import score_targets
from editscope.types import EditRequest


def preference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    preferred: Sequence[str],
    other: Sequence[str],
) -> float:
    """Fraction of prompts where ``preferred[i]`` is more likely per token than ``other[i]`` (NaN for no prompts)."""
    if not prompts:
        return float("nan")
    a = score_targets(model, tokenizer, prompts, preferred)
    b = score_targets(model, tokenizer, prompts, other)
    return sum(x.mean_logprob > y.mean_logprob for x, y in zip(a, b)) / len(prompts)


def efficacy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]) -> float:
    return preference(model, tokenizer, [r.text for r in requests], [r.target_new for r in requests], [r.target_true for r in requests])


def edit_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]) -> dict[str, float]:
    """``{"efficacy", "paraphrase", "neighborhood"}`` over ``requests``."""
    para = [(p, r) for r in requests for p in r.paraphrase_prompts]
    neigh = [(n, r) for r in requests for n in r.neighborhood]
    return {
        "efficacy": efficacy(model, tokenizer, requests),
        "paraphrase": preference(model, tokenizer, [p for p, _ in para], [r.target_new for _, r in para], [r.target_true for _, r in para]),
        "neighborhood": preference(model, tokenizer, [n.prompt for n, _ in neigh], [n.answer for n, _ in neigh], [r.target_new for _, r in neigh]),
    }

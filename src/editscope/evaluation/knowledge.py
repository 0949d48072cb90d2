"""Which facts does a model know? The true object's rank and log-probability after the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.evaluation.scoring import TargetScore, score_targets
from editscope.types import EditRequest


@dataclass(frozen=True)
class Knowledge:
    """The model's view of one request's true and new targets before any edit."""

    request_id: str
    true: TargetScore
    new: TargetScore

    @property
    def known(self) -> bool:
        """Rank 1: the true object's first token is the model's top next-token prediction."""
        return self.true.first_rank == 1


def probe_knowledge(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    *,
    batch_size: int = 32,
) -> list[Knowledge]:
    """Score ``target_true`` and ``target_new`` after each request's prompt."""
    prompts = [r.text for r in requests]
    scores = score_targets(
        model,
        tokenizer,
        prompts + prompts,
        [r.target_true for r in requests] + [r.target_new for r in requests],
        batch_size=batch_size,
    )
    n = len(requests)
    return [Knowledge(r.id, scores[i], scores[n + i]) for i, r in enumerate(requests)]

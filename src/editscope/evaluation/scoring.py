"""Batched scoring of target continuations: log-probabilities, first-token ranks, greedy match.

Every edit metric (efficacy, paraphrase, neighborhood) and the "does the model know this
fact" annotation reduce to: for prompt p and target t, how likely is t after p. Requests are
left-padded so every row's target ends at the last position; only the last ``max(len(t))``
positions are sent through the unembedding (``logits_to_keep``), which on a 49k-token vocabulary
is a fifth of a small model's compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TargetScore:
    """Scores of one target after one prompt.

    Attributes:
        logprob: sum of the target tokens' log-probabilities (nats).
        mean_logprob: the same divided by the number of target tokens.
        first_rank: 1-based rank of the target's first token among the vocabulary (1 = argmax).
        greedy: whether every target token is the argmax given the tokens before it.
        n_tokens: number of target tokens.
    """

    logprob: float
    mean_logprob: float
    first_rank: int
    greedy: bool
    n_tokens: int

    @property
    def prob(self) -> float:
        return float(torch.tensor(self.logprob).exp())


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``" " + target`` as it continues the prompt.

    The pair is tokenized together and split at the prompt's length, so tokenizers that merge
    across the boundary or treat a leading space specially give the ids the model would see.
    Falls back to separate tokenization where joint tokenization does not keep the prompt's ids.
    """
    target = target if target[:1].isspace() else " " + target
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(prompt + target, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if full_ids and eos is not None and full_ids[-1] == eos and (not prompt_ids or prompt_ids[-1] == eos):
        full_ids, prompt_ids = full_ids[:-1], prompt_ids[:-1]  # tokenizers that append EOS
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return list(prompt_ids), list(full_ids[len(prompt_ids) :])
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return list(prompt_ids), list(target_ids)


def left_padded_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Left-pad ``sequences``; returns ``input_ids``, ``attention_mask`` and ``position_ids``, each [batch, pos]."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def score_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[TargetScore]:
    """Score ``targets[i]`` after ``prompts[i]`` for every i, in batches of ``batch_size``."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    # Longest first: similar lengths share a batch, less padding.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[TargetScore | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = [pairs[i][0] + pairs[i][1][:-1] for i in chunk]
        keep = max(len(pairs[i][1]) for i in chunk)
        ids, mask, positions = left_padded_batch(inputs, pad, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [batch, keep, vocab]
        for row, i in enumerate(chunk):
            target = pairs[i][1]
            steps = logprobs[row, keep - len(target) :]  # the positions that predict the target tokens
            target_t = torch.tensor(target, device=device)
            token_lp = steps.gather(1, target_t[:, None]).squeeze(1)
            first = steps[0]
            rank = int((first > first[target[0]]).sum()) + 1
            greedy = bool((steps.argmax(dim=-1) == target_t).all())
            total = float(token_lp.sum())
            results[i] = TargetScore(total, total / len(target), rank, greedy, len(target))
    return [r for r in results if r is not None]

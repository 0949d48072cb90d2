"""Batched scoring of target continuations: log-probabilities, first-token ranks, greedy match.

Every edit metric (efficacy, paraphrase, neighborhood) and the "does the model know this
fact" annotation reduce to: for prompt p and target t, how likely is t after p. ``score_targets``
runs each distinct prompt once and every target's later tokens on the prompt's key/value cache;
only the positions that predict a target token are unembedded (on a 49k-token vocabulary one
position's unembedding costs about a quarter of a token's pass through a small model's blocks).
:class:`TargetBatch` (prompt and target in one left-padded row, the targets ending at the last
position, ``logits_to_keep``) is the form the editors' differentiable losses use.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.models.placement import input_device
from editscope.tokens import encode_pair, head_logits, left_padded_batch, pad_id


@dataclass(frozen=True)
class TargetScore:
    """Scores of one target after one prompt.

    Attributes:
        logprob: sum of the target tokens' log-probabilities (nats).
        mean_logprob: the same divided by the number of target tokens.
        first_rank: 1-based rank of the target's first token among the vocabulary (1 = argmax).
        greedy: whether every target token is the argmax given the tokens before it.
        n_tokens: number of target tokens.
        n_correct: how many target tokens are the argmax given the tokens before them (teacher
            forcing; zsRE's token-level top-1 accuracy is ``n_correct / n_tokens``).
    """

    logprob: float
    mean_logprob: float
    first_rank: int
    greedy: bool
    n_tokens: int
    n_correct: int = 0

    @property
    def prob(self) -> float:
        return float(torch.tensor(self.logprob).exp())


def score_from_logits(steps: Tensor, target: Sequence[int]) -> TargetScore:
    """A :class:`TargetScore` from the logits ``[len(target), vocab]`` that predict each target token."""
    ids = torch.tensor(list(target), device=steps.device)
    logprobs = torch.log_softmax(steps.float(), dim=-1)
    total = float(logprobs[torch.arange(len(ids), device=steps.device), ids].sum())
    rank = int((steps[0] > steps[0, ids[0]]).sum()) + 1
    hits = steps.argmax(dim=-1) == ids
    return TargetScore(total, total / len(ids), rank, bool(hits.all()), len(ids), int(hits.sum()))


def _continuation_hidden(model: PreTrainedModel, cache, mask: Tensor, rows: Sequence[int], prompt_lengths: Sequence[int],
                         continuations: Sequence[Sequence[int]], pad: int) -> Tensor:
    """Final hidden states of ``continuations[j]`` fed after prompt row ``rows[j]`` of ``cache``: ``[n, width, d]``.

    ``cache`` and ``mask`` are the left-padded prompt pass's; the continuations are right-padded and
    their positions continue each prompt's own length.
    """
    device = mask.device
    index = torch.tensor(list(rows), device=device)
    selected = copy.deepcopy(cache)
    selected.batch_select_indices(index)
    width = max(len(c) for c in continuations)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    own = torch.zeros((len(rows), width), dtype=torch.long)
    for j, c in enumerate(continuations):
        ids[j, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        own[j, : len(c)] = 1
    positions = torch.arange(width)[None, :] + torch.tensor(list(prompt_lengths))[:, None]
    full_mask = torch.cat([mask[index], own.to(device)], dim=1)
    out = model.base_model(input_ids=ids.to(device), attention_mask=full_mask, position_ids=positions.to(device),
                           cache=selected, use_cache=True)
    return out.last_hidden_state


@torch.no_grad()
def score_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[TargetScore]:
    """Score ``targets[i]`` after ``prompts[i]`` for every i.

    Each distinct prompt runs once (left-padded, ``batch_size`` prompts a pass, longest first); its
    last position's logits score the first token of every target that follows it. Targets longer
    than one token then run their other tokens on top of the prompts' key/value cache, so a prompt
    scored against several targets (target_new and target_true) costs one prompt pass, and only
    the positions that predict a target token go through the unembedding.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    device = input_device(model)
    pad = pad_id(tokenizer)
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt_ids, _) in enumerate(pairs):
        by_prompt.setdefault(tuple(prompt_ids), []).append(i)
    unique = sorted(by_prompt, key=lambda ids: -len(ids))
    results: list[TargetScore | None] = [None] * len(pairs)
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        ids, mask, positions = left_padded_batch(chunk, pad, device)
        out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        first = head_logits(model, out.last_hidden_state[:, -1])  # [prompts, vocab]
        rows, lengths, continuations, owners = [], [], [], []
        for row, prompt_ids in enumerate(chunk):
            for i in by_prompt[prompt_ids]:
                if len(pairs[i][1]) > 1:
                    rows.append(row)
                    lengths.append(len(prompt_ids))
                    continuations.append(pairs[i][1][:-1])
                    owners.append(i)
                else:
                    results[i] = score_from_logits(first[row : row + 1], pairs[i][1])
        if owners:
            hidden = _continuation_hidden(model, out.cache, mask, rows, lengths, continuations, pad)
            for j, i in enumerate(owners):
                later = head_logits(model, hidden[j, : len(continuations[j])])
                results[i] = score_from_logits(torch.cat([first[rows[j] : rows[j] + 1], later]), pairs[i][1])
    return [r for r in results if r is not None]

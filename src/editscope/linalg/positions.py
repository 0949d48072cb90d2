"""Token positions of subjects inside prompts, and left-padded prompt batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from editscope.errors import RequestError
from editscope.tokens import encode_pair, left_padded_batch, pad_id, right_aligned


def last_token_of_span(tokenizer: PreTrainedTokenizerBase, text: str, char_end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the token holding character ``char_end - 1``."""
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    for index in range(len(ids) - 1, -1, -1):
        start, end = offsets[index]
        if end > start and start < char_end:
            return list(ids), index
    raise RequestError("subject", f"no token of {text!r} covers character {char_end - 1}")


@dataclass(frozen=True)
class PositionedBatch:
    """Left-padded rows, each with the position where something is read or added.

    ``position[r]`` indexes the padded row ``r``; ``target_ids``/``target_mask`` ([rows, keep]) are
    right-aligned targets predicted by the last ``keep`` positions (all-masked for rows without one).
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    position: Tensor
    target_ids: Tensor
    target_mask: Tensor
    keep: int

    def forward_kwargs(self) -> dict[str, Tensor | int | bool]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "logits_to_keep": self.keep,
            "use_cache": False,
        }


@dataclass(frozen=True)
class PositionedRows:
    """Token rows before padding: ``tokens[r]`` is the prompt (+ its target minus the last token),
    ``where[r]`` the index of the subject's last token in it, ``targets[r]`` the target's ids (empty
    for rows without one), and ``prompt_lengths[r]`` the prompt's length in tokens."""

    tokens: list[list[int]]
    where: list[int]
    targets: list[list[int]]
    prompt_lengths: list[int]


def positioned_rows(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], subject_ends: Sequence[int], targets: Sequence[str | None]
) -> PositionedRows:
    """Rows ``prompts[r]`` (+ ``targets[r]`` minus its last token), positioned at the subject's last token.

    ``subject_ends[r]`` is the character offset just past the subject in ``prompts[r]``.
    """
    rows = PositionedRows([], [], [], [])
    for prompt, end, target in zip(prompts, subject_ends, targets):
        prompt_ids, index = last_token_of_span(tokenizer, prompt, end)
        target_ids: list[int] = []
        if target is not None:
            joint_prompt, target_ids = encode_pair(tokenizer, prompt, target)
            if joint_prompt != prompt_ids:
                raise RequestError("prompt", f"tokenization of {prompt!r} differs with and without offsets")
        rows.tokens.append(prompt_ids + target_ids[:-1])
        rows.where.append(index)
        rows.targets.append(target_ids)
        rows.prompt_lengths.append(len(prompt_ids))
    return rows


def positioned_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    subject_ends: Sequence[int],
    targets: Sequence[str | None],
    device: torch.device,
) -> PositionedBatch:
    """:func:`positioned_rows` left-padded into one batch, ``position`` at each subject's last token."""
    positioned = positioned_rows(tokenizer, prompts, subject_ends, targets)
    rows, where, row_targets = positioned.tokens, positioned.where, positioned.targets
    ids, mask, positions = left_padded_batch(rows, pad_id(tokenizer), device)
    width = ids.shape[1]
    position = torch.tensor([width - len(row) + index for row, index in zip(rows, where)], device=device)
    keep = max([len(t) for t in row_targets] + [1])
    target_ids, target_mask = right_aligned(row_targets, keep, device)
    return PositionedBatch(ids, mask, positions, position, target_ids, target_mask, keep)

"""Token batches shared by the math core, the editors and evaluation.

A prompt and its target are tokenized together (:func:`encode_pair`); rows are left-padded with
position ids that skip the padding (:func:`left_padded_batch`); targets sit right-aligned in the
last positions of a forward pass with ``logits_to_keep`` (:class:`TargetBatch`); final hidden
states are unembedded with the model's soft-cap (:func:`head_logits`). ``linalg``, ``editors`` and
``evaluation`` all build on this module, which depends on none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase


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


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the pad token, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


@dataclass(frozen=True)
class TargetBatch:
    """Left-padded prompt+target rows whose targets end at the last position.

    ``logits[:, -keep:]`` of a forward pass with ``logits_to_keep=keep`` predict the targets:
    row ``i``'s target token ``j`` is predicted at kept position ``keep - len_i + j``.
    ``target_ids`` is [batch, keep] right-aligned, ``target_mask`` marks its real entries.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    target_ids: Tensor
    target_mask: Tensor
    keep: int

    def forward_kwargs(self) -> dict[str, Tensor | int]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "logits_to_keep": self.keep,
        }

    def target_logprobs(self, logits: Tensor) -> Tensor:
        """Per-token log-probabilities of the targets, [batch, keep] (0 where masked)."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(2, self.target_ids[..., None]).squeeze(2)
        return picked * self.target_mask


def target_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[str], device: torch.device
) -> TargetBatch:
    """Build a :class:`TargetBatch` for ``targets[i]`` after ``prompts[i]``."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    keep = max(len(t) for _, t in pairs)
    ids, mask, positions = left_padded_batch([p + t[:-1] for p, t in pairs], pad_id(tokenizer), device)
    target_ids, target_mask = right_aligned([t for _, t in pairs], keep, device)
    return TargetBatch(ids, mask, positions, target_ids, target_mask, keep)


def right_aligned(targets: Sequence[Sequence[int]], keep: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Targets right-aligned in ``keep`` columns (the last ``keep`` positions predict them): ids and a 0/1 mask."""
    target_ids = torch.zeros((len(targets), keep), dtype=torch.long)
    target_mask = torch.zeros((len(targets), keep))
    for row, t in enumerate(targets):
        if t:
            target_ids[row, keep - len(t) :] = torch.tensor(list(t))
            target_mask[row, keep - len(t) :] = 1.0
    return target_ids.to(device), target_mask.to(device)


def head_logits(model: PreTrainedModel, hidden: Tensor) -> Tensor:
    """Unembed final hidden states ``[..., d_model]`` -> ``[..., vocab]`` (with the config's soft-cap, if any)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits

"""MEND's locality loss (Mitchell et al. 2022, Eq. 4b): ``L_loc = KL(p_θ ‖ p_θ̃)`` on text the edit must not change.

Two kinds of locality rows, mixed by ``MENDTrainConfig.loc_text_share``:

* neighbor prompts -- the training requests' neighborhood prompts (same relation, other subject),
  compared at their answer's positions (:func:`locality_kl`);
* unrelated text -- fixed-length windows of a text corpus (the paper's loc examples, drawn from an
  unrelated corpus), compared at every position (:func:`text_locality_kl`). Each window is
  assigned to one edit of the step and run through the model with that edit applied
  (:func:`text_pass`), so the KL is the one of the edit the window's row belongs to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.data.corpora import TextCorpus
from editscope.editors.mend.factors import EditSite, low_rank_edits
from editscope.evaluation.scoring import TargetBatch
from editscope.linalg.values import replay_lower_blocks
from editscope.models.hooks import capture_outputs
from editscope.models.spec import ModelSpec
from editscope.precision import autocast
from editscope.types import EditRequest


def locality_pool(train: Sequence[EditRequest], held_out: Sequence[EditRequest]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the neighbor-prompt locality loss: the training requests' neighborhood
    prompts, except those that are a held-out request's own prompt; requests without neighbors add their own true fact."""
    excluded = {r.text for r in held_out}
    pool = [(n.prompt, n.answer) for r in train for n in r.neighborhood if n.prompt not in excluded]
    pool += [(r.text, r.target_true) for r in train if not r.neighborhood]
    return list(dict.fromkeys(pool))


def text_windows(tokenizer: PreTrainedTokenizerBase, corpus: TextCorpus, tokens: int) -> Tensor:
    """Every document of ``corpus`` tokenized (no special tokens) and cut into consecutive windows of
    ``tokens`` tokens (a document's remainder is dropped), in corpus order: ``Long[Tensor, "windows tokens"]``."""
    windows: list[list[int]] = []
    for text in corpus.texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows.extend(ids[start : start + tokens] for start in range(0, len(ids) - tokens + 1, tokens))
    if not windows:
        raise ConfigError(
            f"MENDTrainConfig.loc_corpus: {corpus.metadata.get('source')!r} has no document of {tokens} tokens "
            f"(lower loc_text_tokens or use a longer corpus)"
        )
    return torch.tensor(windows, dtype=torch.long)


def kl_per_position(base_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """``KL(p_θ ‖ p_θ̃)`` (MEND Eq. 4b) at each position: ``[..., vocab]`` logits of the unedited (θ) and
    edited (θ̃) model -> ``Float[Tensor, "..."]`` (nats, float32)."""
    base = torch.log_softmax(base_logits.float(), dim=-1)
    edited = torch.log_softmax(edited_logits.float(), dim=-1)
    return (base.exp() * (base - edited)).sum(-1)


def locality_kl(base_logits: Tensor, edited_logits: Tensor, batch: TargetBatch, rows: Tensor) -> Tensor:
    """Eq. 4b on neighbor prompts: the KL averaged over the answer positions of ``rows`` (a scalar; 0 without rows)."""
    kl = kl_per_position(base_logits[rows], edited_logits[rows])  # [rows, keep]
    mask = batch.target_mask[rows]
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def text_locality_kl(base_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """Eq. 4b on unrelated text: the KL averaged over every position of every window
    (``Float[Tensor, "windows tokens vocab"]`` logits, no padding) -> a scalar."""
    return kl_per_position(base_logits, edited_logits).mean()


def text_pass(
    model: PreTrainedModel,
    spec: ModelSpec,
    sites: Sequence[EditSite],
    packed: Mapping[str, tuple[Tensor, Tensor]],
    owner: Tensor,
    input_ids: Tensor,
    autocast_dtype: str | None,
) -> tuple[Tensor, Tensor]:
    """Logits of the unedited and the edited model on text windows ``input_ids`` [windows, tokens].

    Window ``r`` gets edit ``owner[r]`` of ``packed`` (as :func:`~editscope.editors.mend.factors.low_rank_edits`).
    The blocks below the first edited one run once (they do not depend on the edit) and are replayed
    for both passes; the edited pass carries gradients to ``packed``. Returns ``(base, edited)``, each ``[windows, tokens, vocab]``; ``base`` is detached.
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
    first = min(site.layer for site in sites)
    with contextlib.ExitStack() as stack:
        if first > 0:
            below = spec.layer_path(first - 1)
            with autocast(input_ids.device, autocast_dtype):
                cached = capture_outputs(model, [below], below, **kwargs)[below]
            stack.enter_context(replay_lower_blocks(model, spec, first - 1, cached))
        with torch.no_grad(), autocast(input_ids.device, autocast_dtype):
            base = model(**kwargs).logits
        with autocast(input_ids.device, autocast_dtype), low_rank_edits(model, sites, packed, owner):
            edited = model(**kwargs).logits
    return base.detach(), edited

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
from editscope.linalg.zpass import replay_lower_blocks
from editscope.models.hooks import capture_outputs
from editscope.models.spec import ModelSpec
from editscope.precision import autocast
from editscope.tokens import TargetBatch
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


DIVERGENCES = ("forward", "reverse", "symmetric")
"""Locality divergences: ``forward`` = ``KL(p_θ ‖ p_θ̃)`` (MEND Eq. 4b), ``reverse`` = ``KL(p_θ̃ ‖ p_θ)``,
``symmetric`` = their mean (half Jeffreys' divergence)."""


def kl_per_position(base_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """``KL(p_θ ‖ p_θ̃)`` (MEND Eq. 4b) at each position: ``[..., vocab]`` logits of the unedited (θ) and
    edited (θ̃) model -> ``Float[Tensor, "..."]`` (nats, float32)."""
    return _kl(torch.log_softmax(base_logits.float(), dim=-1), torch.log_softmax(edited_logits.float(), dim=-1))


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p ‖ q)`` over the last axis from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def divergence_per_position(base_logits: Tensor, edited_logits: Tensor, kind: str = "forward") -> Tensor:
    """The locality divergence ``kind`` (see :data:`DIVERGENCES`) at each position, in nats.

    The forward KL weighs each token by the unedited model's probability, so an edit that lifts a token
    the unedited model found unlikely (the edit's new object on a neighbor prompt) costs little until the
    lift is large; the reverse KL weighs by the edited model's probability and charges that lift directly.
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown locality divergence {kind!r}; expected one of {', '.join(DIVERGENCES)}")
    base = torch.log_softmax(base_logits.float(), dim=-1)
    edited = torch.log_softmax(edited_logits.float(), dim=-1)
    if kind == "forward":
        return _kl(base, edited)
    if kind == "reverse":
        return _kl(edited, base)
    return 0.5 * (_kl(base, edited) + _kl(edited, base))


def locality_kl(base_logits: Tensor, edited_logits: Tensor, batch: TargetBatch, rows: Tensor, kind: str = "forward") -> Tensor:
    """Eq. 4b on neighbor prompts: the divergence averaged over the answer positions of ``rows`` (a scalar; 0 without rows)."""
    kl = divergence_per_position(base_logits[rows], edited_logits[rows], kind)  # [rows, keep]
    mask = batch.target_mask[rows]
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def text_locality_kl(base_logits: Tensor, edited_logits: Tensor, kind: str = "forward") -> Tensor:
    """Eq. 4b on unrelated text: the divergence averaged over every position of every window
    (``Float[Tensor, "windows tokens vocab"]`` logits, no padding) -> a scalar."""
    return divergence_per_position(base_logits, edited_logits, kind).mean()


def departure_points(batch: TargetBatch, loc_rows: Tensor, edit_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where each neighbor row's own answer and its edit's new object ``o*`` part: ``(rows, columns, tokens)``.

    For locality row ``loc_rows[i]`` and its edit row ``edit_rows[i]`` (right-aligned targets), the column of
    the neighbor's answer whose next token is the first token of ``o*`` that differs from the answer's,
    and that token. With teacher forcing on the answer, the prefix there is also ``o*``'s prefix, so the
    logits at that column give ``o*``'s own next-token probability. Rows where one is a prefix of the
    other have no such point and are left out.
    """
    ids, lengths = batch.target_ids.tolist(), batch.target_mask.sum(1).long().tolist()
    rows, columns, tokens = [], [], []
    for loc, edit in zip(loc_rows.tolist(), edit_rows.tolist()):
        answer, new = ids[loc][batch.keep - lengths[loc] :], ids[edit][batch.keep - lengths[edit] :]
        shared = next((j for j, (a, b) in enumerate(zip(answer, new)) if a != b), None)
        if shared is not None:
            rows.append(loc)
            columns.append(batch.keep - len(answer) + shared)
            tokens.append(new[shared])
    device = batch.target_ids.device
    return tuple(torch.tensor(v, dtype=torch.long, device=device) for v in (rows, columns, tokens))  # type: ignore[return-value]


def target_lift(base_logits: Tensor, edited_logits: Tensor, batch: TargetBatch, loc_rows: Tensor, edit_rows: Tensor) -> Tensor:
    """Mean over neighbor rows of ``max(0, log p_θ̃(o*_j | n, a_<j) − log p_θ(o*_j | n, a_<j))``: how much the
    edit lifts its new object ``o*`` on its neighbor prompt ``n`` at the point where ``o*`` parts from the
    neighbor's answer ``a`` (see :func:`departure_points`; ``edit_rows[i]`` is the edit row of
    ``loc_rows[i]``). CounterFact's neighborhood score fails exactly when that lift carries ``o*`` above
    the neighbor's own answer. 0 when no row has a departure point."""
    rows, columns, tokens = departure_points(batch, loc_rows, edit_rows)
    if rows.numel() == 0:
        return base_logits.new_zeros((), dtype=torch.float32)
    base = torch.log_softmax(base_logits[rows, columns].float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)
    edited = torch.log_softmax(edited_logits[rows, columns].float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)
    return (edited - base).clamp(min=0).mean()


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

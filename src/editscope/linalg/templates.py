"""Context templates: the bare prompt plus short texts sampled from the model, ``"<text>. {}"``.

Keys (and z*'s rewriting prompts) are averaged over the prompt preceded by these texts, so that an
edit does not depend on one context (ROME eq. 3; MEMIT Alg. 1). As the reference code does
(kmeng01/rome and kmeng01/memit ``get_context_templates`` with ``util/generate.py::generate_fast``):

* each text is sampled from the model, top-k 5 at temperature 1, starting from a seed text, until
  it is ``length`` tokens long *counting the seed's tokens* (and the tokenizer's start token, where
  it adds one), without stopping at an end-of-text token;
* MEMIT seeds one text from each of "The", "Therefore", "Because", "I", "You" (``[(10, 5)]``: five
  texts of 10 tokens); ROME seeds every text from the start-of-text token (``<|endoftext|>`` on
  GPT-2), ten of 5 tokens and ten of 10 (``[[5, 10], [10, 10]]``), 21 templates with the bare one;
* the decoded text, special tokens left out, is NFKD-normalized, blank lines become one space and
  braces become spaces (MEMIT's code does the latter; ROME's would fail on a brace), then
  ``". {}"`` is appended.

Unlike the reference, which draws new texts on every run, sampling uses a fixed seed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.models.placement import input_device

MEMIT_SEEDS = ("The", "Therefore", "Because", "I", "You")
"""The seed words of MEMIT's context templates (kmeng01/memit ``memit_main.py::get_context_templates``)."""
TOP_K = 5
"""``generate_fast``'s default ``top_k``, which ``get_context_templates`` keeps."""


def start_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The start-of-text token ROME seeds from: the tokenizer's BOS token, else its EOS token (GPT-2's ``<|endoftext|>`` is both)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to seed context templates from")
    return [int(token)]


@torch.no_grad()
def sample_top_k(model: PreTrainedModel, seed_ids: Sequence[int], n: int, length: int, generator: torch.Generator) -> Tensor:
    """``n`` continuations of ``seed_ids`` sampled top-k (:data:`TOP_K`, temperature 1) up to ``length``
    tokens in all, seed included: ``Long[Tensor, "n length"]`` (just the seed where it is that long already)."""
    device = input_device(model)
    ids = torch.tensor([list(seed_ids)] * n, dtype=torch.long)
    cache, step_ids = None, ids
    while ids.shape[1] < length:
        out = model(input_ids=step_ids.to(device), cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
        probs = torch.softmax(out.logits[:, -1].float().cpu(), dim=-1)
        top, index = probs.topk(TOP_K, dim=-1)
        picked = torch.multinomial(top / top.sum(dim=-1, keepdim=True), 1, generator=generator)
        step_ids = index.gather(1, picked)
        ids = torch.cat([ids, step_ids], dim=1)
    return ids


def template_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """``"<text>. {}"`` from sampled token ids (module docstring)."""
    text = unicodedata.normalize("NFKD", tokenizer.decode(list(ids), skip_special_tokens=True))
    return text.replace("\n\n", " ").replace("{", " ").replace("}", " ") + ". {}"


def context_templates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    lengths: Sequence[tuple[int, int]],
    seeds: Sequence[str],
    seed: int,
) -> tuple[str, ...]:
    """``("{}", "<text>. {}", ...)``: the bare template, then for each ``(length, count)`` of ``lengths``
    ``count`` sampled texts of ``length`` tokens: ``count // len(seeds)`` from each seed text, or all
    ``count`` from the start-of-text token where ``seeds`` is empty (module docstring)."""
    templates = ["{}"]
    generator = torch.Generator().manual_seed(seed)
    for length, count in lengths:
        starts = [tokenizer(s, add_special_tokens=True)["input_ids"] for s in seeds] or [start_ids(tokenizer)]
        per_start = count // len(starts) if seeds else count
        for ids in starts:
            if per_start > 0:
                templates.extend(template_text(tokenizer, row) for row in sample_top_k(model, ids, per_start, length, generator).tolist())
    return tuple(templates)

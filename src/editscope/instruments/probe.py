"""Activations of a fixed probe text set at every layer's residual stream, attention output and MLP output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.data.corpora import load_corpus
from editscope.linalg.stats import token_chunks
from editscope.models.hooks import capture_outputs, output_hidden
from editscope.models.placement import input_device
from editscope.models.spec import ModelSpec

SITES = ("resid", "attn_out", "mlp_out")


@dataclass(frozen=True)
class ProbeConfig:
    """The probe text set.

    Attributes:
        corpus: text source (see ``data.corpora``; ``default`` is the bundled Wikipedia sample).
        n_texts: number of probe windows.
        seq_len: tokens per window.
        skip_first_tokens: leading positions left out of every statistic (the first token's
            activations are orders of magnitude larger -- the attention sink -- and would dominate).
        sites: which sites to read: ``resid`` (block output), ``attn_out``, ``mlp_out``.
    """

    corpus: str = "default"
    n_texts: int = 16
    seq_len: int = 64
    skip_first_tokens: int = 1
    sites: tuple[str, ...] = SITES


def probe_tokens(tokenizer: PreTrainedTokenizerBase, config: ProbeConfig) -> list[list[int]]:
    """The probe windows' token ids (from the end of the corpus, away from the statistics' samples)."""
    corpus = load_corpus(config.corpus)
    reversed_corpus = type(corpus)(tuple(reversed(corpus.texts)), corpus.metadata)
    return token_chunks(tokenizer, reversed_corpus, config.n_texts, config.seq_len)


def site_modules(spec: ModelSpec, layer: int) -> dict[str, str]:
    return {"resid": spec.layer_path(layer), "attn_out": spec.module_path(layer, "attn"), "mlp_out": spec.module_path(layer, "mlp")}


@torch.no_grad()
def collect(
    model: PreTrainedModel, spec: ModelSpec, windows: Sequence[Sequence[int]], config: ProbeConfig
) -> dict[str, Tensor]:
    """``{"layers.<i>.<site>": Float[Tensor, "tokens d_model"]}`` over the real (unpadded, unskipped) tokens."""
    device = input_device(model)
    width = max(len(w) for w in windows)
    ids = torch.zeros((len(windows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, w in enumerate(windows):
        ids[r, : len(w)] = torch.tensor(list(w))
        mask[r, : len(w)] = 1
    keep = mask.bool().clone()
    keep[:, : config.skip_first_tokens] = False
    keep = keep.to(device)
    paths = {
        f"layers.{layer}.{site}": path
        for layer in range(spec.num_layers(model))
        for site, path in site_modules(spec, layer).items()
        if site in config.sites
    }
    outputs = capture_outputs(model, list(paths.values()), None, input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return {key: _rows(output_hidden(outputs[path]), keep).to(device) for key, path in paths.items()}


def _rows(hidden: Tensor, keep: Tensor) -> Tensor:
    """``hidden[keep]`` in float32, on ``hidden``'s device (a block may sit on another device than the inputs)."""
    return hidden[keep.to(hidden.device)].float()

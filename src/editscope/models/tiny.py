"""Tiny random-initialized models of the supported architectures, for fast tests.

Built from configs in memory (no files, no hub): a few layers, small widths, and a byte-level
tokenizer from the ``tokenizers`` library (256 byte tokens plus specials) so that real
tokenization code paths -- leading spaces, offsets, padding -- are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.models.gemma3 import Gemma3TextConfig

from editscope.models.hooks import contiguous_head
from editscope.models.spec import ModelSpec, spec_for_config

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is one token (ids 0..255)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in (BOS, EOS, PAD):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tok.padding_side = "right"
    return tok


@dataclass(frozen=True)
class TinyShape:
    """Sizes of a tiny test model."""

    layers: int = 4
    d_model: int = 64
    d_mlp: int = 128
    heads: int = 4
    context: int = 256
    init_std: float = 0.1


def _tiny_config(arch: str, vocab: int, shape: TinyShape) -> PretrainedConfig:
    # A wider init than the usual 0.02 gives peaked next-token distributions, so that edits on
    # tiny models move probabilities measurably, as on trained models.
    common_ids = {"bos_token_id": vocab - 3, "eos_token_id": vocab - 2, "pad_token_id": vocab - 1, "initializer_range": shape.init_std}
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
            num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads // 2,
            max_position_embeddings=shape.context, tie_word_embeddings=True, **common_ids,
        )
    if arch == "gemma3":
        return Gemma3TextConfig(
            vocab_size=vocab, hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
            num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=1,
            head_dim=shape.d_model // shape.heads, max_position_embeddings=shape.context,
            sliding_window=32, **common_ids,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=shape.d_model, n_inner=shape.d_mlp, n_layer=shape.layers,
            n_head=shape.heads, n_positions=shape.context, **common_ids,
        )
    if arch == "gptj":
        return GPTJConfig(
            vocab_size=vocab, n_embd=shape.d_model, n_inner=shape.d_mlp, n_layer=shape.layers,
            n_head=shape.heads, n_positions=shape.context, rotary_dim=shape.d_model // shape.heads // 2, **common_ids,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab, hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
            num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
            max_position_embeddings=shape.context, **common_ids,
        )
    raise ValueError(f"no tiny config for {arch!r}; choose one of {', '.join(TINY_ARCHS)}")


TINY_ARCHS = ("llama", "gemma3", "gpt2", "gptj", "gpt_neox")



def tiny_model(
    arch: str = "llama", *, seed: int = 0, shape: TinyShape | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, ModelSpec]:
    """A randomly initialized model of ``arch`` (fp32, eval mode), its byte tokenizer and spec."""
    tok = byte_tokenizer()
    config = _tiny_config(arch, len(tok), shape or TinyShape())
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    contiguous_head(model)
    return model, tok, spec_for_config(model.config)

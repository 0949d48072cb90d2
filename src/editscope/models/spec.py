"""Architecture facts, one :class:`ModelSpec` per ``config.model_type``.

Shared code asks the spec where things are (layer list, MLP projections, attention output,
final norm, unembedding) and how weights are laid out -- GPT-2's ``Conv1D`` stores its
weight as (in, out), every ``nn.Linear`` as (out, in). Nothing else in editscope branches on
a model's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from editscope.errors import UnsupportedArchitectureError
from editscope.registry import Registry

MODEL_SPECS: Registry[ModelSpec] = Registry("architecture")


@dataclass(frozen=True)
class ModelSpec:
    """Where the parts of a decoder-only transformer live, by module path.

    Attributes:
        name: the spec's name (e.g. ``llama``).
        model_types: ``config.model_type`` values this spec covers.
        layers: dotted path of the ``nn.ModuleList`` of decoder blocks.
        mlp_in: path of the MLP input projection inside a block (the up projection).
        mlp_out: path of the MLP output projection inside a block (the matrix locate-and-edit methods edit).
        attn_out: path of the attention output projection inside a block.
        mlp: path of the whole MLP module inside a block (its output is the block's MLP contribution
            before any post-MLP norm).
        attn: path of the attention module inside a block.
        mlp_out_norm: path of a norm applied to the MLP output before the residual add (Gemma's
            ``post_feedforward_layernorm``), or ``None``.
        final_norm: dotted path of the final norm before the unembedding.
        embed: dotted path of the token embedding.
        unembed: dotted path of the output projection (``lm_head``).
        transposed: ``True`` where weights are stored (in, out) (``transformers.Conv1D``).
        context_attrs: config attributes that hold the context length, first present wins.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    mlp_in: str
    mlp_out: str
    attn_out: str
    mlp: str
    attn: str
    final_norm: str
    embed: str
    unembed: str
    mlp_out_norm: str | None = None
    transposed: bool = False
    context_attrs: tuple[str, ...] = ("max_position_embeddings",)

    # -- paths ---------------------------------------------------------------------------
    def layer_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}"

    def module_path(self, layer: int, part: str) -> str:
        """Dotted path of a block part (``"mlp_out"``, ``"attn_out"``, ``"mlp"``, ...) in layer ``layer``."""
        return f"{self.layers}.{layer}.{getattr(self, part)}"

    def weight_name(self, layer: int, part: str = "mlp_out") -> str:
        """Parameter name of a block part's weight, e.g. ``model.layers.4.mlp.down_proj.weight``."""
        return f"{self.module_path(layer, part)}.weight"

    # -- model facts ---------------------------------------------------------------------
    def num_layers(self, model: nn.Module) -> int:
        return len(model.get_submodule(self.layers))

    def context_length(self, config: PretrainedConfig) -> int:
        for attr in self.context_attrs:
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        raise UnsupportedArchitectureError(f"{self.name}: config has none of {self.context_attrs}")

    def check_layer(self, model: nn.Module, layer: int) -> None:
        n = self.num_layers(model)
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{n - 1}")

    # -- orientation ---------------------------------------------------------------------
    def as_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """View a stored weight as (out, in), the orientation of ``y = W x``."""
        return weight.T if self.transposed else weight

    def to_stored(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`as_out_in`: an (out, in) matrix in the stored layout."""
        return matrix.T if self.transposed else matrix

    def mlp_out_weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """The MLP output projection of ``layer`` as an (out=d_model, in=d_mlp) matrix (a view)."""
        return self.as_out_in(model.get_parameter(self.weight_name(layer, "mlp_out")))


def register_model_spec(spec: ModelSpec) -> ModelSpec:
    """Register ``spec`` under its name and every model type it covers."""
    MODEL_SPECS.add(spec.name, spec)
    for model_type in spec.model_types:
        if model_type != spec.name:
            MODEL_SPECS.add(model_type, spec)
    return spec


LLAMA = register_model_spec(
    ModelSpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers="model.layers",
        mlp_in="mlp.up_proj",
        mlp_out="mlp.down_proj",
        attn_out="self_attn.o_proj",
        mlp="mlp",
        attn="self_attn",
        final_norm="model.norm",
        embed="model.embed_tokens",
        unembed="lm_head",
    )
)

GEMMA3 = register_model_spec(
    ModelSpec(
        name="gemma3",
        model_types=("gemma3_text",),
        layers="model.layers",
        mlp_in="mlp.up_proj",
        mlp_out="mlp.down_proj",
        attn_out="self_attn.o_proj",
        mlp="mlp",
        attn="self_attn",
        mlp_out_norm="post_feedforward_layernorm",
        final_norm="model.norm",
        embed="model.embed_tokens",
        unembed="lm_head",
    )
)

GPT2 = register_model_spec(
    ModelSpec(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        mlp_in="mlp.c_fc",
        mlp_out="mlp.c_proj",
        attn_out="attn.c_proj",
        mlp="mlp",
        attn="attn",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        unembed="lm_head",
        transposed=True,
        context_attrs=("n_positions", "n_ctx"),
    )
)

GPTJ = register_model_spec(
    ModelSpec(
        name="gptj",
        model_types=("gptj",),
        layers="transformer.h",
        mlp_in="mlp.fc_in",
        mlp_out="mlp.fc_out",
        attn_out="attn.out_proj",
        mlp="mlp",
        attn="attn",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        unembed="lm_head",
        context_attrs=("n_positions",),
    )
)

GPT_NEOX = register_model_spec(
    ModelSpec(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        mlp_in="mlp.dense_h_to_4h",
        mlp_out="mlp.dense_4h_to_h",
        attn_out="attention.dense",
        mlp="mlp",
        attn="attention",
        final_norm="gpt_neox.final_layer_norm",
        embed="gpt_neox.embed_in",
        unembed="lm_head",
    )
)


def supported_architectures() -> list[str]:
    """Spec names (not aliases), sorted."""
    return sorted({spec.name for _, spec in MODEL_SPECS.items()})


def spec_for_config(config: PretrainedConfig) -> ModelSpec:
    """The spec for ``config.model_type``; an unknown type lists the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_SPECS:
        covered = sorted({t for _, s in MODEL_SPECS.items() for t in s.model_types})
        raise UnsupportedArchitectureError(
            f"unsupported architecture model_type={model_type!r}; supported: {', '.join(covered)} "
            f"(specs: {', '.join(supported_architectures())}). Add a ModelSpec with register_model_spec()."
        )
    return MODEL_SPECS.get(model_type)

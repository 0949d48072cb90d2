"""LoRA editor (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through ``peft``.

A LoRA adapter is attached to the MLP output projections of ``config.layers`` and trained on the
same target NLL as the fine-tuning editors (:func:`editscope.editors.ft.target_nll`). The merged
update of each wrapped module, ``ΔW = (B A) · scaling`` with ``scaling = alpha / rank``
(Hu et al. 2021, Eq. 3; what ``peft``'s ``merge`` adds), is returned in the parameter's stored
layout under the base parameter's name; the adapter is then unloaded, which puts the original
modules back, so the model is exactly as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, LoraModel
from peft.tuners.lora import LoraLayer
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.editors.base import Editor, EditorConfig, register_editor, trainable
from editscope.editors.ft import minimize_target_nll, request_batch
from editscope.models.spec import ModelSpec
from editscope.precision import seeded
from editscope.types import EditRequest, WeightDelta

ADAPTER = "editscope"
"""Name of the temporary peft adapter."""


@dataclass(frozen=True)
class LoRAEditorConfig(EditorConfig):
    """Hyperparameters of the ``lora`` editor.

    Attributes:
        layers: decoder blocks whose MLP output projection (the spec's ``mlp_out``) gets an adapter.
        steps: number of AdamW steps (count). EasyEdit's LoRA editor: 70.
        lr: AdamW learning rate. EasyEdit's LoRA editor: 5e-3.
        rank: LoRA rank ``r``, the inner dimension of ``B A`` (count); bounds the rank of each
            update. EasyEdit: 8.
        alpha: LoRA ``alpha``; the update is scaled by ``alpha / rank`` (Hu et al. 2021, Sec. 4.1).
            EasyEdit: 32.
        dropout: dropout probability on the adapter's input during training (0 = none, so
            training is deterministic). EasyEdit uses 0.1; 0 here by default.
        weight_decay: AdamW's decoupled weight decay on the adapter weights. EasyEdit: 0.
        stop_loss: stop early once the mean per-token target NLL (nats) falls below this; ``None``
            never stops early. 1e-2 as ROME's fine-tuning loop.
        seed: seed of the adapter's random initialization (``A`` is Kaiming-uniform, ``B`` zero);
            drawn from a forked RNG, so the global RNG state is left untouched.
    """

    steps: int = 70
    lr: float = 5e-3
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    weight_decay: float = 0.0
    stop_loss: float | None = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        where = type(self).__name__
        if not self.layers:
            raise ConfigError(f"{where}.layers: at least one layer is needed")
        if self.steps < 1:
            raise ConfigError(f"{where}.steps: must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"{where}.lr: must be > 0, got {self.lr}")
        if self.rank < 1:
            raise ConfigError(f"{where}.rank: must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {self.dropout}")
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay: must be >= 0, got {self.weight_decay}")


def lora_delta(layer: LoraLayer, spec: ModelSpec, adapter: str = ADAPTER) -> Tensor:
    """``(B A) · scaling`` of ``adapter`` in the base weight's stored layout and dtype.

    Shapes: ``lora_A.weight`` is [rank, in], ``lora_B.weight`` is [out, rank]; ``B @ A`` is the
    (out, in) update, turned into the stored layout by the spec (GPT-2's Conv1D stores (in, out)).
    """
    a = layer.lora_A[adapter].weight.detach()
    b = layer.lora_B[adapter].weight.detach()
    out_in = (b.float() @ a.float()) * layer.scaling[adapter]
    base = layer.get_base_layer().weight
    return spec.to_stored(out_in).to(dtype=base.dtype, device=base.device).contiguous()


@contextlib.contextmanager
def attached_lora(model: PreTrainedModel, config: LoraConfig, seed: int) -> Iterator[LoraModel]:
    """Attach a LoRA adapter in place for the duration of the block, then unload it.

    The adapter's initialization draws from a forked RNG seeded with ``seed``. On exit the original
    modules are put back (``unload``) and ``model.peft_config`` is gone.
    """
    with seeded(model.get_input_embeddings().weight.device, seed):
        tuner = LoraModel(model, config, ADAPTER)
    try:
        yield tuner
    finally:
        tuner.unload()


@register_editor("lora")
class LoRAEditor(Editor):
    """Train a LoRA adapter on the MLP output projections of ``config.layers``; return its merged update."""

    config_class = LoRAEditorConfig
    config: LoRAEditorConfig

    def compute_delta(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
    ) -> WeightDelta:
        self.check_requests(requests)
        cfg = self.config
        spec = self.spec(model)
        names = self.edited_parameters(model)  # also checks the layers exist
        paths = {spec.module_path(layer, "mlp_out"): name for layer, name in zip(cfg.layers, names)}
        lora_config = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=sorted(paths),
            fan_in_fan_out=spec.transposed,
            bias="none",
        )
        batch = request_batch(model, tokenizer, requests)
        with torch.enable_grad(), trainable(model, []), attached_lora(model, lora_config, cfg.seed) as tuner:
            layers = {path: model.get_submodule(path) for path in paths}
            for path, layer in layers.items():
                if not isinstance(layer, LoraLayer):
                    raise RuntimeError(f"peft did not wrap {path} (got {type(layer).__name__})")
            params = [p for layer in layers.values() for p in layer.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            minimize_target_nll(tuner.model, batch, optimizer, cfg.steps, cfg.stop_loss, self.name)
            deltas = {paths[path]: lora_delta(layer, spec) for path, layer in layers.items()}
        return WeightDelta(deltas)

"""ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT") with r-ROME's fix.

One layer, one fact at a time: k* is the MLP-output projection's input at the subject's last token
(averaged over context prefixes), v* the MLP output that makes the model say target_new (z*
optimized at the MLP output of that layer), and the rank-one update

    dW = (v* - W k*) (C0^{-1} k*)^T / ((C0^{-1} k*)^T k*)

uses the same averaged k* in both places (r-ROME, Gupta et al. 2024), so (W + dW) k* = v*.
A batch of several requests is edited one after another, each on top of the previous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.editors.base import register_editor
from editscope.editors.locate import LocateConfig, LocateEditor
from editscope.linalg.keys import compute_keys
from editscope.linalg.updates import rome_rank_one
from editscope.linalg.values import ZConfig, compute_z
from editscope.types import EditRequest, WeightDelta, preserved


@dataclass(frozen=True)
class RomeConfig(LocateConfig):
    """ROME hyperparameters.

    Attributes:
        layers: exactly one layer (ROME edits a single MLP).
        z: v* optimization (ROME on GPT-2 XL: 20 steps, lr 0.5, weight decay 1e-3, clamp factor 4).
    """

    layers: tuple[int, ...] = (5,)
    z: ZConfig = field(default_factory=lambda: ZConfig(steps=20, weight_decay=1e-3, clamp_norm_factor=4.0))

    def __post_init__(self) -> None:
        if len(self.layers) != 1:
            raise ConfigError(f"rome edits exactly one layer, got layers={list(self.layers)}")


@register_editor("rome")
class Rome(LocateEditor):
    config_class = RomeConfig
    config: RomeConfig

    def layer_update(self, layer, r, k):  # pragma: no cover - ROME does not use MEMIT's layer loop
        raise NotImplementedError

    def compute_delta(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
    ) -> WeightDelta:
        self.check_requests(requests)
        spec = self.prepare(model, tokenizer)
        layer = self.config.layers[0]
        name = spec.weight_name(layer)
        param = model.get_parameter(name)
        c0 = self._c0[layer]
        self.last_vectors: list[tuple[torch.Tensor, torch.Tensor]] = []
        with preserved(model, [name]) as originals:
            for request in requests:
                k = compute_keys(model, tokenizer, spec, [layer], [request], self._templates)[layer][:, 0]
                v = compute_z(model, tokenizer, spec, layer, [request], self._templates, self.config.z, site="mlp_out").z[:, 0]
                k = k.to(param.device)
                w = spec.as_out_in(param.detach())
                update = rome_rank_one(w, k, v.to(param.device), c0.to(param.device))
                if not torch.isfinite(update).all():
                    raise FloatingPointError(f"rome: non-finite update for request {request.id}")
                with torch.no_grad():
                    param.add_(spec.to_stored(update).to(device=param.device, dtype=param.dtype))
                self.last_vectors.append((k, v))
            delta = param.detach() - originals[name]
        return WeightDelta({name: delta})

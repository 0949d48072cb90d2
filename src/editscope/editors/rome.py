"""ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

One layer, one fact at a time, as kmeng01/rome's ``rome_main.py`` does:

* u = C0^{-1} k̄, with k̄ the MLP output projection's input at the subject's last token averaged
  uniformly over 21 context templates (``compute_u``);
* v* = h + delta, the MLP output that makes the model say target_new (z* optimized at the MLP
  output, ``compute_v``), h the current MLP output at the bare prompt;
* the rank-one update (eq. 2) solved at the bare prompt's key k:

      dW = (v* - (W k + b)) u^T / (u^T k) = delta u^T / (u^T k)

  so (W + dW) k + b = v*; the projection's bias b, where it has one (GPT-2's ``c_proj``), is part of
  the current output on both sides and cancels.

``consistent_key`` is r-ROME's variant (Gupta et al. 2024, "Rebuilding ROME"): the averaged k̄
also in the solve, dW = (v* - (W k̄ + b)) u^T / (u^T k̄), so (W + dW) k̄ + b = v*; its authors
report that it avoids the sudden model collapse of sequential ROME. A batch of several requests is
edited one after another, each on top of the previous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.editors.base import register_editor
from editscope.editors.locate import LocateConfig, LocateEditor, band
from editscope.linalg.keys import compute_keys
from editscope.linalg.updates import rome_rank_one
from editscope.linalg.values import ZConfig, compute_z
from editscope.types import EditRequest, WeightDelta, preserved


@dataclass(frozen=True)
class RomeConfig(LocateConfig):
    """ROME hyperparameters; defaults from kmeng01/rome ``hparams/ROME/gpt2-xl.json`` and ``EleutherAI_gpt-j-6B.json``.

    Attributes:
        layers: exactly one layer (ROME edits a single MLP; 17 on GPT-2 XL, 5 on GPT-J).
        z: v* optimization (20 steps, lr 0.5, weight decay 0.5, clamp factor 4, KL factor 0.0625).
        context_lengths: ten texts of 5 tokens and ten of 10 (``context_template_length_params``).
        context_seeds: none: every text starts from the start-of-text token (``<|endoftext|>``).
        key_average: ``uniform`` over the 21 templates (``compute_u``).
        consistent_key: r-ROME's solve at the averaged key instead of the bare prompt's (module docstring).
        mom2_adjustment: u = C0^{-1} k̄ (ROME's ``mom2_adjustment``, true for GPT-2 XL and GPT-J);
            ``False``: u = k̄ (AlphaEdit's Llama3-8B ROME file).
    """

    layers: tuple[int, ...] = (5,)
    z: ZConfig = field(default_factory=lambda: ZConfig(steps=20, weight_decay=0.5, clamp_norm_factor=4.0))
    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    context_seeds: tuple[str, ...] = ()
    key_average: Literal["groups", "uniform"] = "uniform"
    consistent_key: bool = False
    mom2_adjustment: bool = True

    @classmethod
    def derived(cls, n_layers: int, d_mlp: int) -> dict[str, Any]:
        """One layer, the middle of the MEMIT family's band (GPT-J: ROME edits 5, MEMIT 3-8)."""
        middle = band(n_layers)
        return {"layers": [middle[len(middle) // 2]]}

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
        bias = getattr(model.get_submodule(spec.module_path(layer, "mlp_out")), "bias", None)
        c0 = self._c0[layer]
        self.last_vectors: list[tuple[torch.Tensor, torch.Tensor]] = []
        with preserved(model, [name]) as originals:
            for request in requests:
                k_avg = compute_keys(model, tokenizer, spec, [layer], [request], self._templates, average=self.config.key_average)[layer][:, 0]
                zres = compute_z(model, tokenizer, spec, layer, [request], self._templates, self.config.z, site="mlp_out")
                v = zres.z[:, 0].to(param.device)
                w = spec.as_out_in(param.detach())
                if self.config.consistent_key:
                    k = k_avg.to(param.device)
                    current = w.double() @ k.double() + (bias.detach().double() if bias is not None else 0.0)
                else:
                    k = compute_keys(model, tokenizer, spec, [layer], [request], ("{}",))[layer][:, 0].to(param.device)
                    current = zres.h[:, 0].to(param.device)  # the MLP output at the bare prompt: W k + b
                metric = c0.to(param.device) if self.config.mom2_adjustment else torch.eye(c0.shape[0], dtype=c0.dtype, device=param.device)
                update = rome_rank_one(k_avg.to(param.device), k, v - current, metric)
                if not torch.isfinite(update).all():
                    raise FloatingPointError(f"rome: non-finite update for request {request.id}")
                with torch.no_grad():
                    param.add_(spec.to_stored(update).to(device=param.device, dtype=param.dtype))
                self.last_vectors.append((k, v))
            delta = param.detach() - originals[name]
        return WeightDelta({name: delta})

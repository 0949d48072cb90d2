"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"): dW = R K^T (lambda C0 + K K^T)^{-1}."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from editscope.editors.base import register_editor
from editscope.editors.locate import LocateConfig, LocateEditor, scaled_lambda
from editscope.linalg.updates import memit_update


@dataclass(frozen=True)
class MemitConfig(LocateConfig):
    """MEMIT hyperparameters.

    Attributes:
        mom2_update_weight: lambda, the weight of C0 = E[k k^T] against the new keys (``mom2_update_weight``:
            15,000 on GPT-J and Llama-3-8B, 20,000 on GPT-2 XL).
    """

    mom2_update_weight: float = 15000.0

    @classmethod
    def derived(cls, n_layers: int, d_mlp: int) -> dict[str, Any]:
        return {**super().derived(n_layers, d_mlp), "mom2_update_weight": scaled_lambda(15000.0, d_mlp)}


@register_editor("memit")
class Memit(LocateEditor):
    config_class = MemitConfig
    config: MemitConfig

    def layer_update(self, layer: int, r: Tensor, k: Tensor) -> Tensor:
        return memit_update(r, k, self._c0[layer].to(k.device), self.config.mom2_update_weight)

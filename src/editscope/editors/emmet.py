"""EMMET (Gupta et al. 2024, "A Unified Framework for Model Editing"): equality-constrained batch editing,

    dW = R (K^T C0^{-1} K + eps I)^{-1} K^T C0^{-1}

with the Cholesky factor of C0 computed once and reused for every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from editscope.editors.base import register_editor
from editscope.editors.locate import LocateConfig, LocateEditor
from editscope.linalg.updates import emmet_update


@dataclass(frozen=True)
class EmmetConfig(LocateConfig):
    """EMMET hyperparameters.

    Attributes:
        mom2_update_weight: lambda scaling C0 (EMMET uses MEMIT's lambda; it only matters against eps).
        eps: ridge on K^T C0^{-1} K for batches with near-duplicate keys (EMMET: small; unit: same as lambda C0).
    """

    mom2_update_weight: float = 15000.0
    eps: float = 0.1


@register_editor("emmet")
class Emmet(LocateEditor):
    config_class = EmmetConfig
    config: EmmetConfig

    def on_statistics(self) -> None:
        self._factor = {
            layer: torch.linalg.cholesky(self.config.mom2_update_weight * c0.double()) for layer, c0 in self._c0.items()
        }

    def layer_update(self, layer: int, r: Tensor, k: Tensor) -> Tensor:
        return emmet_update(r, k, self._factor[layer].to(k.device), self.config.eps)

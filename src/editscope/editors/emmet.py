"""EMMET (Gupta et al. 2024, "A Unified Framework for Model Editing"): equality-constrained batch editing,

    dW = R (K^T C^{-1} K + eps I)^{-1} K^T C^{-1},    C = lambda C0 (+ Kp Kp^T)

As the reference code does: ``eps`` is added only for batches of more than one request
(scalable-model-editing/unified-model-editing ``emmet_main.py``: "to counter ill-conditioned D"),
and for sequential editing the Gram matrix of every earlier edit's keys is added to C
(scalable-model-editing/encore ``emmet/emmet_main.py`` with ``add_prev_edits``, the EMMET that the
ENCORE paper compares against); the published settings edit one layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from editscope.editors.base import register_editor
from editscope.editors.locate import LocateConfig, LocateEditor, SequentialGramMixin, band, scaled_lambda
from editscope.linalg.updates import emmet_update


@dataclass(frozen=True)
class EmmetConfig(LocateConfig):
    """EMMET hyperparameters (defaults: scalable-model-editing/encore ``hparams/EMMET/EleutherAI_gpt-j-6B.json``).

    Attributes:
        layers: the edited layer (one: 17 on GPT-2 XL, 5 on GPT-J and Llama).
        mom2_update_weight: lambda scaling C0 (encore's files: 10,000 on GPT-2 XL, 100,000 on GPT-J and
            Llama; unified-model-editing's: 1,000 on GPT-2 XL, 1 on GPT-J and Llama-2).
        eps: ridge on K^T C^{-1} K for batches of more than one request (``emmet_lambda``: 0.1 in every file).
        add_prev_edits: add earlier edits' Kp Kp^T to C (encore's sequential EMMET: true; unified-model-editing: absent).
    """

    layers: tuple[int, ...] = (5,)
    mom2_update_weight: float = 100000.0
    eps: float = 0.1
    add_prev_edits: bool = True

    @classmethod
    def derived(cls, n_layers: int, d_mlp: int) -> dict[str, Any]:
        """One layer, the middle of the MEMIT family's band; lambda scaled from GPT-J's 100,000."""
        middle = band(n_layers)
        return {"layers": [middle[len(middle) // 2]], "mom2_update_weight": scaled_lambda(100000.0, d_mlp)}


@register_editor("emmet")
class Emmet(SequentialGramMixin, LocateEditor):
    config_class = EmmetConfig
    config: EmmetConfig

    def on_statistics(self) -> None:
        self._factor = {
            layer: torch.linalg.cholesky(self.config.mom2_update_weight * c0.double()) for layer, c0 in self._c0.items()
        }

    def layer_update(self, layer: int, r: Tensor, k: Tensor) -> Tensor:
        eps = self.config.eps if k.shape[1] > 1 else 0.0
        if self.config.add_prev_edits and layer in self._gram:
            c = self.config.mom2_update_weight * self._c0[layer].to(k.device).double() + self.prev_gram(layer, k.shape[0], k)
            return emmet_update(r, k, torch.linalg.cholesky(c), eps)
        return emmet_update(r, k, self._factor[layer].to(k.device), eps)

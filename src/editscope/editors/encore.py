"""ENCORE (Gupta et al. 2025, "Lifelong Sequential Knowledge Editing without Model Degradation"):
MEMIT with most-probable early stopping (MPES) for z* and a Frobenius-norm constraint,

    dW = R K^T (lambda_p C0 + lambda_n I + Kp Kp^T + K K^T)^{-1},

the minimizer of lambda_p||dW K0||^2 + ||dW Kp||^2 + ||(W + dW) K - Z||^2 + lambda_n ||dW||_F^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from editscope.editors.base import register_editor
from editscope.editors.locate import LocateConfig, LocateEditor, SequentialGramMixin, scaled_lambda
from editscope.linalg.updates import encore_update
from editscope.linalg.values import ZConfig


@dataclass(frozen=True)
class EncoreConfig(LocateConfig):
    """ENCORE hyperparameters.

    Attributes:
        z: z* optimization with MPES, stopping at the 2nd hit (``prob_cutoff`` -2 on Llama-3-8B, -4 on GPT-2 XL).
        mom2_update_weight: lambda_p, the weight of preserving generic keys C0 (as MEMIT's lambda:
            15,000 on Llama-3-8B, 20,000 on GPT-2 XL).
        norm_weight: lambda_n, the Frobenius-norm penalty on dW (``update_norm_lambda``: 20 on
            Llama-3-8B, 10 on GPT-2 XL and Llama-2-7B; scalable-model-editing/encore ``hparams/ENCORE``).
    """

    z: ZConfig = field(default_factory=lambda: ZConfig(mpes=True, mpes_hits=2))
    mom2_update_weight: float = 15000.0
    norm_weight: float = 20.0

    @classmethod
    def derived(cls, n_layers: int, d_mlp: int) -> dict[str, Any]:
        return {**super().derived(n_layers, d_mlp), "mom2_update_weight": scaled_lambda(15000.0, d_mlp)}


@register_editor("encore")
class Encore(SequentialGramMixin, LocateEditor):
    config_class = EncoreConfig
    config: EncoreConfig

    def layer_update(self, layer: int, r: Tensor, k: Tensor) -> Tensor:
        return encore_update(
            r, k, self._c0[layer].to(k.device), self.prev_gram(layer, k.shape[0], k),
            self.config.mom2_update_weight, self.config.norm_weight,
        )

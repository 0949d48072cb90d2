"""AlphaEdit (Fang et al. 2025, "Null-Space Constrained Knowledge Editing"):

    dW = R K^T P (Kp Kp^T P + K K^T P + alpha I)^{-1}

with P the projector onto the null space of C0 (computed once, from the unedited model) and Kp Kp^T
the Gram matrix of all earlier edits' keys, accumulated in the editor's state; no C0 term, as in
jianghoucheng/AlphaEdit ``AlphaEdit_main.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from editscope.editors.base import register_editor
from editscope.editors.locate import LocateConfig, LocateEditor, SequentialGramMixin
from editscope.linalg.updates import alphaedit_update, null_space_projector


@dataclass(frozen=True)
class AlphaEditConfig(LocateConfig):
    """AlphaEdit hyperparameters.

    Attributes:
        nullspace_threshold: eigenvalues of C0 = E[k k^T] below this span the preserved null space
            (``nullspace_threshold``: 2e-2 in every hparams file of jianghoucheng/AlphaEdit).
        alpha: ridge term alpha I (``L2``: 10 in AlphaEdit's GPT-2 XL, GPT-J and Llama3-8B files).
    """

    nullspace_threshold: float = 2e-2
    alpha: float = 10.0


@register_editor("alphaedit")
class AlphaEdit(SequentialGramMixin, LocateEditor):
    config_class = AlphaEditConfig
    config: AlphaEditConfig

    def on_statistics(self) -> None:
        self._projector = {layer: null_space_projector(c0, self.config.nullspace_threshold) for layer, c0 in self._c0.items()}

    def layer_update(self, layer: int, r: Tensor, k: Tensor) -> Tensor:
        p = self._projector[layer].to(k.device)
        return alphaedit_update(r, k, p, self.prev_gram(layer, k.shape[0], k), self.config.alpha)

"""Activation norms and subspace shift against the unedited model, on a fixed probe text set.

``activations`` keys: ``act/layers.<i>.<site>/norm`` (mean L2 norm of the activation vectors) and
``act/layers.<i>.<site>/share`` (that norm over the same layer's residual-stream norm).

``subspace`` keys, per residual site, edited activations X1 against the unedited X0 (same tokens):
  ``angle_mean`` mean principal angle (degrees) between the top-k PCA subspaces;
  ``overlap``    ||U0^T U1||_F^2 / k (1: same subspace, ~k/d: unrelated);
  ``cka``        linear CKA (Kornblith et al. 2019) of the centered activations;
  ``cosine``     mean cosine between paired activation vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.instruments.base import Instrument, register_instrument
from editscope.instruments.probe import ProbeConfig, collect, probe_tokens
from editscope.models.spec import spec_for_config


def centered(x: Tensor) -> Tensor:
    """Rows of ``x`` ([tokens, d]) minus their mean, in float64."""
    x = x.double()
    return x - x.mean(dim=0, keepdim=True)


def pca_basis(gram: Tensor, k: int) -> Tensor:
    """Orthonormal top-``k`` principal directions, [d, k], from the centered Gram matrix ``XcᵀXc`` ([d, d]).

    The eigenvectors of ``XcᵀXc`` with the largest eigenvalues span the same subspace as the top
    right singular vectors of ``Xc`` (a d x d eigenproblem instead of an SVD of the tokens).
    """
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vectors[:, -k:].flip(1)


def principal_angles(u0: Tensor, u1: Tensor) -> Tensor:
    """Principal angles (radians) between the column spaces of orthonormal ``u0`` and ``u1``."""
    cosines = torch.linalg.svdvals(u0.T @ u1).clamp(-1.0, 1.0)
    return torch.arccos(cosines)


def linear_cka_from_grams(cross: Tensor, gram0: Tensor, gram1: Tensor) -> float:
    """Linear CKA = ||X1ᵀX0||_F² / (||X0ᵀX0||_F ||X1ᵀX1||_F) on centered X0, X1 (Kornblith et al. 2019, eq. 5)."""
    return float(torch.linalg.matrix_norm(cross) ** 2 / (torch.linalg.matrix_norm(gram0) * torch.linalg.matrix_norm(gram1)))


def linear_cka(x0: Tensor, x1: Tensor) -> float:
    """Linear CKA of two activation matrices over the same rows."""
    a, b = centered(x0), centered(x1)
    return linear_cka_from_grams(b.T @ a, a.T @ a, b.T @ b)


def mean_cosine(x0: Tensor, x1: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x0.double(), x1.double(), dim=1).mean())


class _ProbeInstrument(Instrument):
    config_class = ProbeConfig

    def __init__(self, config: ProbeConfig | None = None) -> None:
        self.config = config or ProbeConfig()
        self._windows: list[list[int]] | None = None

    def windows(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        if self._windows is None:
            self._windows = probe_tokens(tokenizer, self.config)
        return self._windows

    def activations(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
        return collect(model, spec_for_config(model.config), self.windows(tokenizer), self.config)


@register_instrument("activations")
class ActivationNorms(_ProbeInstrument):
    """Mean activation norms at every layer and site, and each sub-module's share of the residual norm."""

    def measure(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        acts = self.activations(model, tokenizer)
        metrics = {f"act/{key}/norm": float(x.norm(dim=1).mean()) for key, x in acts.items()}
        for key in acts:
            layer, site = key.rsplit(".", 1)
            resid = metrics.get(f"act/{layer}.resid/norm")
            if site != "resid" and resid:
                metrics[f"act/{key}/share"] = metrics[f"act/{key}/norm"] / resid
        return metrics


@dataclass(frozen=True)
class SubspaceConfig(ProbeConfig):
    """Probe set plus the PCA subspace size.

    Attributes:
        k: number of principal directions compared (top-k PCA subspace).
    """

    k: int = 16
    sites: tuple[str, ...] = field(default=("resid",))


@register_instrument("subspace")
class SubspaceShift(_ProbeInstrument):
    """How far activations move from the unedited model's: principal angles, overlap, CKA, cosine."""

    config_class = SubspaceConfig

    def __init__(self, config: SubspaceConfig | None = None) -> None:
        super().__init__(config or SubspaceConfig())
        self._x0: dict[str, Tensor] = {}
        self._c0: dict[str, Tensor] = {}  # centered X0
        self._g0: dict[str, Tensor] = {}  # X0ᵀX0 (centered)
        self._u0: dict[str, Tensor] = {}

    def baseline(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        """Keeps X0, its centered Gram matrix and PCA basis; returns the step-0 figures (X0 against itself)."""
        self._x0 = {key: x.cpu() for key, x in self.activations(model, tokenizer).items()}
        self._c0 = {key: centered(x) for key, x in self._x0.items()}
        self._g0 = {key: c.T @ c for key, c in self._c0.items()}
        self._u0 = {key: pca_basis(g, self.config.k) for key, g in self._g0.items()}
        return self.compare(self._x0)

    def measure(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        if not self._x0:
            raise RuntimeError("subspace: baseline() must run on the unedited model first")
        return self.compare({key: x.cpu() for key, x in self.activations(model, tokenizer).items()})

    def compare(self, acts: dict[str, Tensor]) -> dict[str, float]:
        """The subspace figures of activations ``acts`` (same sites and tokens as X0) against X0."""
        metrics: dict[str, float] = {}
        for key, x1 in acts.items():
            c1 = centered(x1)
            g1 = c1.T @ c1
            u0, u1 = self._u0[key], pca_basis(g1, self.config.k)
            angles = principal_angles(u0, u1)
            metrics[f"subspace/{key}/angle_mean"] = math.degrees(float(angles.mean()))
            metrics[f"subspace/{key}/overlap"] = float(torch.linalg.matrix_norm(u0.T @ u1) ** 2) / u0.shape[1]
            metrics[f"subspace/{key}/cka"] = linear_cka_from_grams(c1.T @ self._c0[key], self._g0[key], g1)
            metrics[f"subspace/{key}/cosine"] = mean_cosine(self._x0[key], x1)
        return metrics


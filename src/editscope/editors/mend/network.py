"""The MEND gradient-transformation network (Mitchell et al. 2022, "Fast Model Editing at Scale", ICLR).

For a linear layer ``y = W u`` (``W`` of shape (out, in)) and one example, the fine-tuning
gradient is a sum of rank-1 products over the example's tokens (MEND Sec. 3.1, Eq. 1):

    ∇_W L = Σ_t δ_t u_tᵀ,   u_t the layer input at token t, δ_t = ∂L/∂y_t.

MEND never forms that matrix: a small network ``g`` maps each token's pair to a pseudo-pair
``(ũ_t, δ̃_t) = g(u_t, δ_t)`` and the edit is ``W̃ = W − α_ℓ Σ_t δ̃_t ũ_tᵀ`` with a learned step
size ``α_ℓ`` per edited matrix (Sec. 3.1, Eq. 2-3). ``g`` is shared by all edited matrices of one
shape and conditioned on which matrix it edits ("mode" ℓ) through a per-mode scale and offset:

    z_ℓ = concat(norm(u), norm(δ))                                     (inputs normalized, Sec. 3.1)
    h_ℓ = z_ℓ + ReLU(s¹_ℓ ⊙ (U₁ V₁ z_ℓ + b₁) + o¹_ℓ)                      (Eq. 3a)
    g(z_ℓ) = h_ℓ + (s²_ℓ ⊙ (U₂ V₂ h_ℓ + b₂) + o²_ℓ)                       (Eq. 3b)

``U`` starts at zero and ``s = 1 + scale`` with ``scale``, ``o``, ``b`` at zero, so ``g`` starts as the
identity on the normalized inputs (the paper's identity initialization). Following the official
implementation (``IDMLP`` / ``LRLinear``), the last layer has no non-linearity and the inputs are
normalized with running statistics over every token seen in training (Welford), frozen afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NORM_EPS = 1e-7
"""Added to the running standard deviation before dividing (MEND's implementation: 1e-7)."""


def rank_one_gradient(u: Tensor, delta: Tensor) -> Tensor:
    """``Σ_t δ_t u_tᵀ`` (MEND Eq. 1): the gradient of a linear layer's weight, (out, in).

    Shapes: ``u`` is ``Float[Tensor, "tokens in"]``, ``delta`` is ``Float[Tensor, "tokens out"]``.
    """
    return delta.transpose(0, 1) @ u


def mend_update(u_tilde: Tensor, delta_tilde: Tensor, step_size: Tensor | float) -> Tensor:
    """``ΔW = −α Σ_t δ̃_t ũ_tᵀ`` (MEND Sec. 3.1: ``W̃ = W − α_ℓ ∇̃_W``), in (out, in) orientation.

    Shapes: ``u_tilde`` ``Float[Tensor, "tokens in"]``, ``delta_tilde`` ``Float[Tensor, "tokens out"]``.
    """
    return -step_size * rank_one_gradient(u_tilde, delta_tilde)


def merge_moments(count: Tensor, mean: Tensor, m2: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Running count, mean and sum of squared deviations after the rows of ``batch`` [n, d].

    Chan, Golub & LeVeque's (1979) pairwise form of Welford's update, which MEND's
    implementation applies one row at a time (``update_counter``); the variance is ``m2 / (count - 1)``.
    """
    n = batch.shape[0]
    if n == 0:
        return count, mean, m2
    batch = batch.to(mean.dtype)
    batch_mean = batch.mean(dim=0)
    batch_m2 = ((batch - batch_mean) ** 2).sum(dim=0)
    total = count + n
    shift = batch_mean - mean
    new_mean = mean + shift * (n / total)
    new_m2 = m2 + batch_m2 + shift**2 * (count * n / total)
    return total, new_mean, new_m2


class RunningMoments(nn.Module):
    """Per-feature running mean and standard deviation (float64 buffers), for MEND's input normalization."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, rows: Tensor) -> None:
        """Add the rows of ``rows`` ([n, dim]) to the statistics."""
        count, mean, m2 = merge_moments(self.count, self.mean, self.m2, rows.detach())
        self.count.copy_(count)
        self.mean.copy_(mean)
        self.m2.copy_(m2)

    def std(self) -> Tensor:
        if float(self.count) < 2:
            raise RuntimeError(f"MEND normalization needs at least 2 samples, has {int(self.count)}: train the hypernetwork first")
        return (self.m2 / (self.count - 1)).sqrt()

    def normalize(self, x: Tensor) -> Tensor:
        """``(x − mean) / (std + ε)`` in ``x``'s dtype."""
        mean = self.mean.to(x.dtype)
        return (x - mean) / (self.std().to(x.dtype) + NORM_EPS)


class LowRankResidual(nn.Module):
    """One layer of MEND's network, Eq. 3a/3b: ``z + act(s_ℓ ⊙ (U V z + b) + o_ℓ)`` with ``s_ℓ = 1 + scale_ℓ``.

    ``U`` (dim, rank) starts at zero, as in MEND's ``LRLinear`` with ``init="id"``: the layer starts
    as the identity. ``V`` (rank, dim) is drawn from N(0, 1/dim) rather than MEND's N(0, 1), so that
    ``V z`` has unit-scale entries for normalized ``z``: an optimizer step on ``U`` then moves the
    output by about the learning rate whatever the width (MEND compensates with a 1e-6 learning rate
    and 100k+ steps).
    """

    def __init__(self, dim: int, rank: int, modes: int, relu: bool, generator: torch.Generator) -> None:
        super().__init__()
        rank = min(rank, dim)
        self.relu = relu
        self.down = nn.Parameter(torch.randn(rank, dim, generator=generator) / math.sqrt(dim))
        self.up = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.zeros(modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(modes, dim))

    def forward(self, z: Tensor, mode: int) -> Tensor:
        """``Float[Tensor, "tokens dim"]`` -> same shape."""
        pre = (z @ self.down.T) @ self.up.T + self.bias
        pre = pre * (1.0 + self.mode_scale[mode]) + self.mode_shift[mode]
        return z + (pre.clamp(min=0) if self.relu else pre)


class GradientTransform(nn.Module):
    """``g``: (u, δ) -> (ũ, δ̃) for every edited matrix of one shape (MEND Sec. 3.1, "shared" MEND).

    In training mode every call first adds its inputs to the running statistics (MEND's
    implementation), then normalizes; in eval mode the statistics are frozen.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, hidden_layers: int, modes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        dim = in_features + out_features
        self.u_moments = RunningMoments(in_features)
        self.delta_moments = RunningMoments(out_features)
        self.layers = nn.ModuleList(
            LowRankResidual(dim, rank, modes, relu=i < hidden_layers, generator=generator) for i in range(hidden_layers + 1)
        )

    def forward(self, u: Tensor, delta: Tensor, mode: int) -> tuple[Tensor, Tensor]:
        """``u`` ``Float[Tensor, "tokens in"]``, ``delta`` ``Float[Tensor, "tokens out"]`` -> (ũ, δ̃), same shapes, float32."""
        u, delta = u.float(), delta.float()
        if self.training:
            self.u_moments.update(u)
            self.delta_moments.update(delta)
        z = torch.cat([self.u_moments.normalize(u), self.delta_moments.normalize(delta)], dim=-1)
        for layer in self.layers:
            z = layer(z, mode)
        return z[:, : self.in_features], z[:, self.in_features :]


@dataclass(frozen=True)
class WeightSlot:
    """One edited matrix: its parameter name and (out, in) shape; where its network and mode are."""

    name: str
    out_features: int
    in_features: int

    @property
    def shape_key(self) -> str:
        return f"{self.out_features}x{self.in_features}"


class MENDNetwork(nn.Module):
    """All of MEND's trainable parts for one model: a :class:`GradientTransform` per weight shape and a step size per weight.

    ``step_size_init`` must be > 0 (the step size is learned in log space).

    ``slots`` fixes the order of the edited matrices; matrices of one shape share a network and
    get modes 0, 1, ... in that order (MEND's ``shape_dict[shape].index(name)``).
    """

    def __init__(self, slots: Sequence[WeightSlot], *, rank: int, hidden_layers: int, step_size_init: float, seed: int) -> None:
        super().__init__()
        if not slots:
            raise ValueError("MEND needs at least one edited weight")
        self.slots = tuple(slots)
        generator = torch.Generator().manual_seed(seed)
        keys = list(dict.fromkeys(slot.shape_key for slot in self.slots))
        members = {key: [s for s in self.slots if s.shape_key == key] for key in keys}
        self.nets = nn.ModuleDict(
            {
                key: GradientTransform(group[0].in_features, group[0].out_features, rank, hidden_layers, len(group), generator)
                for key, group in members.items()
            }
        )
        self.modes = {slot.name: members[slot.shape_key].index(slot) for slot in self.slots}
        self.log_step_sizes = nn.Parameter(torch.full((len(self.slots),), math.log(step_size_init)))

    @property
    def step_sizes(self) -> Tensor:
        """``α_ℓ`` per slot, learned as ``log α_ℓ`` (MEND learns ``α_ℓ`` itself; the log keeps it positive
        and makes the optimizer's step relative, whatever the model's gradient scale)."""
        return self.log_step_sizes.exp()

    def transform(self, index: int, u: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """(ũ, δ̃) for the tokens of slot ``index`` (see :meth:`GradientTransform.forward`)."""
        slot = self.slots[index]
        return self.nets[slot.shape_key](u, delta, self.modes[slot.name])

    def weight_delta(self, index: int, u: Tensor, delta: Tensor) -> Tensor:
        """``ΔW`` (out, in) of slot ``index`` for the tokens ``u`` [tokens, in], ``delta`` [tokens, out]."""
        u_tilde, delta_tilde = self.transform(index, u, delta)
        return mend_update(u_tilde, delta_tilde, self.step_sizes[index])

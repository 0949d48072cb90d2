"""Residual targets through a norm on the MLP output (Gemma's ``post_feedforward_layernorm``).

MEMIT spreads the residual change z* - h over the edited layers and asks each layer's MLP for its
share r_l. Where the block adds ``norm(m)`` instead of ``m`` (m = W_out a, the MLP's output), with an
RMS norm ``norm(x) = g * x / rms(x)``, a layer can only move its contribution on the ellipsoid
{g * s : rms(s) = 1}; the length of m is free. The share is therefore mapped to a pre-norm target:

1. the reachable point nearest the wanted output t = norm(m) + r_l (:func:`nearest_unit_rms`),
   s* = argmin_{rms(s)=1} ||g * s - t||^2, whose stationarity condition gives
   s_i = g_i t_i / (g_i^2 + mu) with mu the root of mean(s^2) = 1 (the secular equation of a
   trust-region problem; mu > -min g_i^2 picks the global minimum);
2. on the ray of s*, the pre-norm vector closest to the current m (:func:`prenorm_target`),
   m* = (<m, s*> / ||s*||^2) s*, so that W_out moves as little as the direction allows (when s* turns
   90 degrees or more away from m, m* keeps m's length instead).

norm(m*) = g * s* exactly (up to the norm's epsilon), and the layer's pre-norm residual is m* - m.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from editscope.errors import UnsupportedArchitectureError

_DEAD = 1e-6  # a gain below this fraction of the largest one is treated as zero


def rms_gain(norm: nn.Module, width: int, like: Tensor) -> Tensor:
    """The elementwise gain g of an RMS norm, read as ``norm(1)`` and checked on a random vector.

    Raises UnsupportedArchitectureError when ``norm`` is not ``g * x / rms(x)`` (e.g. a LayerNorm, which
    subtracts the mean).
    """
    param = next(norm.parameters(), like)
    with torch.no_grad():
        gain = norm(torch.ones(1, width, dtype=param.dtype, device=param.device))[0].double()
        probe = torch.randn(1, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(param.device)
        got = norm(probe.to(param.dtype))[0].double()
    want = gain * probe[0] / probe[0].pow(2).mean().sqrt()
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * float(gain.abs().max())):
        raise UnsupportedArchitectureError(
            f"{type(norm).__name__} on the MLP output is not an RMS norm with an elementwise gain; "
            "locate-and-edit residual targets cannot be mapped through it"
        )
    return gain.to(like.device)


def _secular(g2t2: Tensor, g2: Tensor, mu: Tensor) -> Tensor:
    """mean_i(g_i^2 t_i^2 / (g_i^2 + mu)^2) - 1, per column; decreasing in mu above -min g^2."""
    return (g2t2 / (g2 + mu) ** 2).mean(dim=0) - 1.0


def nearest_unit_rms(target: Tensor, gain: Tensor, like: Tensor | None = None, iterations: int = 200) -> Tensor:
    """Per column of ``target`` [d, n]: s minimizing ||gain * s - t|| subject to rms(s) = 1 (float64).

    Solves the secular equation for mu by bisection. Where the gain has zero entries and the live
    entries alone cannot reach rms 1 (mu = 0, the trust-region "hard case"), the live entries take
    t_i / g_i and the remaining mass goes to the zero-gain entries, which do not change the output;
    it is shared out in proportion to ``like``'s zero-gain entries (evenly where it has none).
    """
    t, g = target.double(), gain.double()[:, None]
    live = g.abs() > _DEAD * float(g.abs().max())
    g2 = torch.where(live, g * g, torch.zeros_like(g))
    g2t2 = g2 * t * t
    d, n = t.shape
    has_dead = bool((~live).any())
    lo = torch.full((n,), 0.0 if has_dead else -float(g2.min()), dtype=torch.float64, device=t.device)
    hi = (g2t2.sum(dim=0) / d).sqrt().clamp_min(1e-12) + lo.abs()  # mean(g2t2)/(g2+mu)^2 <= 1 there
    hard = torch.zeros(n, dtype=torch.bool, device=t.device)
    if has_dead:
        at_zero = torch.where(live, t / g, torch.zeros_like(t)).pow(2).mean(dim=0)
        hard = at_zero < 1.0  # even mu = 0 leaves rms below 1
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = _secular(g2t2, g2, mid) > 0
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    mu = torch.where(hard, torch.zeros_like(lo), (lo + hi) / 2)
    s = torch.where(live, g * t / (g2 + mu), torch.zeros_like(t))
    if has_dead:
        spare = (1.0 - s.pow(2).mean(dim=0)).clamp_min(0.0)
        shape = torch.where(~live, like.double() if like is not None else torch.ones_like(t), torch.zeros_like(t))
        shape = torch.where(shape.norm(dim=0, keepdim=True) > 0, shape, (~live).double().expand_as(t))
        fill = shape / shape.norm(dim=0, keepdim=True) * (spare * d).sqrt()[None, :]
        s = torch.where(~live & hard[None, :], fill, s)
    return s


def prenorm_target(current: Tensor, wanted: Tensor, gain: Tensor) -> Tensor:
    """The pre-norm MLP output m* [d, n] whose normed value is the reachable point nearest ``wanted``,
    scaled along its ray to lie nearest ``current`` (the present pre-norm output m)."""
    m = current.double()
    s = nearest_unit_rms(wanted, gain, like=m)
    along = (m * s).sum(dim=0) / s.pow(2).sum(dim=0)
    keep_length = m.pow(2).mean(dim=0).sqrt()  # rms(s) = 1, so this gives ||m*|| = ||m||
    return torch.where(along > 0, along, keep_length)[None, :] * s


def prenorm_residual(current: Tensor, normed: Tensor, share: Tensor, gain: Tensor) -> Tensor:
    """A layer's residual ``share`` [d, n], wanted after the norm, as a change of the MLP output before it
    (what W_out K produces): m* - m for the reachable m* nearest ``normed + share``, with ``current`` = m
    and ``normed`` = norm(m)."""
    return (prenorm_target(current, normed + share.to(current.device), gain) - current.double()).to(share.dtype)

"""Residual targets through a post-MLP RMS norm (linalg.postnorm)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from editscope.errors import UnsupportedArchitectureError
from editscope.linalg.postnorm import nearest_unit_rms, prenorm_target, rms_gain
from editscope.models import tiny_model


class GainRMSNorm(nn.Module):
    """g * x / rms(x), the norm the module assumes."""

    def __init__(self, gain: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(gain.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x / x.pow(2).mean(dim=-1, keepdim=True).add(1e-12).sqrt()


def brute_force(target: torch.Tensor, gain: torch.Tensor, grid: int = 1500) -> float:
    """min over rms(s) = 1 of ||g * s - t|| for d = 3, on a fine grid of the sphere of radius sqrt(3)."""
    theta = torch.linspace(0, math.pi, grid, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, 2 * grid, dtype=torch.float64)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    s = math.sqrt(3) * torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()])
    return float((gain[:, None, None] * s - target[:, None, None]).norm(dim=0).min())


@pytest.mark.parametrize(
    "gain, target",
    [
        ([1.0, 2.0, 5.0], [0.5, -3.0, 4.0]),  # outside the ellipsoid
        ([1.0, 2.0, 5.0], [0.1, 0.2, 0.1]),  # inside: the nearest point lies along the short axis
        ([3.0, 0.5, 1.0], [-2.0, 0.4, 0.3]),
        ([0.0, 2.0, 5.0], [0.3, 0.5, 1.0]),  # a zero gain, inside: the "hard case"
        ([0.0, 2.0, 5.0], [0.0, 4.0, 9.0]),  # a zero gain, outside
    ],
)
def test_nearest_point_matches_brute_force_search(gain, target):
    g, t = torch.tensor(gain, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    s = nearest_unit_rms(t[:, None], g)[:, 0]
    assert float(s.pow(2).mean()) == pytest.approx(1.0, abs=1e-9)
    assert float((g * s - t).norm()) <= brute_force(t, g) + 1e-3


def test_reachable_target_is_hit_exactly_and_unchanged_target_gives_no_change():
    torch.manual_seed(0)
    d, n = 64, 5
    gain = torch.rand(d, dtype=torch.float64) * 10 + 0.1
    gain[3] = 0.0  # a dead channel, as Gemma has
    norm = GainRMSNorm(gain)
    m = torch.randn(d, n, dtype=torch.float64)
    other = torch.randn(d, n, dtype=torch.float64)
    wanted = norm(other.T).T.detach()
    m_star = prenorm_target(m, wanted, gain)
    assert torch.allclose(norm(m_star.T).T, wanted, atol=1e-8)
    same = prenorm_target(m, norm(m.T).T.detach(), gain)
    live = gain != 0
    assert torch.allclose(same[live], m[live], atol=1e-8)


@pytest.mark.parametrize("fraction", [0.01, 0.05])
def test_small_share_along_the_reachable_surface_is_delivered_in_full(fraction):
    torch.manual_seed(1)
    d, n = 128, 4
    gain = torch.rand(d, dtype=torch.float64) * 5 + 0.5
    norm = GainRMSNorm(gain)
    m = torch.randn(d, n, dtype=torch.float64)
    normed = norm(m.T).T.detach()
    s = m / m.pow(2).mean(dim=0).sqrt()
    v = torch.randn(d, n, dtype=torch.float64)
    v = v - s * (v * s).sum(dim=0) / s.pow(2).sum(dim=0)  # tangent: g * v with v orthogonal to s
    share = gain[:, None] * v
    share = fraction * normed.norm(dim=0) * share / share.norm(dim=0)
    got = norm(prenorm_target(m, normed + share, gain).T).T.detach() - normed
    assert float((got - share).norm() / share.norm()) < 0.5 * fraction  # only the surface's curvature is lost


def test_pre_norm_target_stays_near_the_current_output():
    torch.manual_seed(2)
    gain = torch.rand(32, dtype=torch.float64) + 0.5
    m = 7.0 * torch.randn(32, 3, dtype=torch.float64)
    wanted = GainRMSNorm(gain)(m.T).T.detach() * 1.02
    m_star = prenorm_target(m, wanted, gain)
    assert float((m_star - m).norm() / m.norm()) < 0.05  # the free length is not thrown away


def test_gain_of_gemma_norm_and_refusal_of_layer_norm():
    model, _, spec = tiny_model("gemma3")
    norm = model.get_submodule(f"{spec.layer_path(0)}.{spec.mlp_out_norm}")
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-0.5, 2.0, norm.weight.numel()))
    gain = rms_gain(norm, norm.weight.numel(), norm.weight)
    x = torch.randn(2, norm.weight.numel())
    with torch.no_grad():
        assert torch.allclose(norm(x).double(), gain * x.double() / x.double().pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-4)
    with pytest.raises(UnsupportedArchitectureError, match="LayerNorm"):
        rms_gain(nn.LayerNorm(8), 8, torch.zeros(1))

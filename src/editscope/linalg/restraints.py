"""Restraints on locate-and-edit updates that fight the norm growth of sequential editing.

* RECT (Gu et al. 2024, "Model Editing Harms General Abilities of Large Language Models:
  Regularization to the Rescue"): of each update, keep only the entries with the largest relative
  change |dW / W| -- the top 40% (the paper's project page; jianghoucheng/AlphaEdit
  ``memit/memit_rect_main.py``: ``k_percent = 40``, ``epsilon = 1e-8``) -- and zero the rest.
* PRUNE (Ma et al., ICLR 2025, "Perturbation-Restrained Sequential Model Editing"): bound the
  condition number of the edited matrix by shrinking the singular values of the accumulated update
  that reach the largest singular value beta of the unedited matrix: sigma -> log_a(sigma) -
  log_a(beta) + beta (mjy1111/PRUNE ``bi_editor_loadw.py::func_log``, a = e by default; AlphaEdit's
  ``MEMIT_prune`` does the same with the natural log).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RECT_EPSILON = 1e-8
"""Added to W before dividing (AlphaEdit's ``memit_rect_main.py``)."""


def rect_mask(update: Tensor, weight: Tensor, keep: float) -> Tensor:
    """RECT's mask over ``update`` ``[d_out, d_in]``: True for the ``keep`` fraction of entries with the
    largest relative change ``|update / (weight + eps)|`` (ties at the threshold kept, as ``>=`` does there)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"RECT: keep must be in (0, 1], got {keep}")
    change = (update.double() / (weight.double() + RECT_EPSILON)).abs().reshape(-1)
    k = int(change.numel() * (1.0 - keep))
    if k < 1:
        return torch.ones_like(update, dtype=torch.bool)
    threshold = torch.kthvalue(change, k).values
    return (change >= threshold).reshape(update.shape)


def prune_singular_values(values: Tensor, beta: float, base: float = math.e) -> Tensor:
    """PRUNE's restraint F(sigma) = log_base(sigma) - log_base(beta) + beta for sigma >= beta; others unchanged."""
    log = torch.log(values.clamp_min(beta)) - math.log(beta)
    return torch.where(values >= beta, log / math.log(base) + beta, values)


def prune_update(accumulated: Tensor, beta: float, base: float = math.e) -> Tensor:
    """The accumulated update ``[d_out, d_in]`` with its singular values restrained (:func:`prune_singular_values`),
    float64; ``beta`` is the unedited matrix's largest singular value."""
    u, s, vh = torch.linalg.svd(accumulated.double(), full_matrices=False)
    return (u * prune_singular_values(s, beta, base)) @ vh

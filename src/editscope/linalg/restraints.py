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
* Norm anchors (arXiv 2602.02543, "Norm Anchors Make Model Edits Last"; SasyaTitech/NAS): rescale
  each edit's MLP value to a reference norm taken from the unedited model (:func:`anchor_values`).
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


ANCHOR_SKIP_FACTOR = 2.0
"""Norm anchors skip an edit whose value is beyond this many reference norms (SasyaTitech/NAS ``compute_z.py``)."""


def anchor_reference(norms: Tensor, quantile: float = 0.95) -> float:
    """The reference norm of norm anchors: the mean of the value norms at or below their ``quantile``
    (NAS drops the top 5% as outliers, ``_NAS_OUTLIER_UPPER_QUANTILE = 0.95``)."""
    norms = norms.double().reshape(-1)
    kept = norms[norms <= torch.quantile(norms, quantile)]
    return float(kept.mean())


def anchor_values(z: Tensor, h: Tensor, v0: Tensor, reference: float) -> tuple[Tensor, Tensor]:
    """Norm anchors (arXiv 2602.02543; SasyaTitech/NAS ``NAS/compute_z.py``) on targets ``z`` ``[d, n]``.

    With ``h`` the site's current value and ``v0`` the MLP output it contains (both ``[d, n]``), the
    edit's MLP value is v* = v0 + (z - h). v* is rescaled to the ``reference`` norm; where
    ||v*|| > 2 x reference the edit is skipped (v* = v0, so the target is h). Returns the new targets
    ``(h - v0) + v*`` and which edits were skipped ``[n]``.
    """
    vstar = v0 + (z - h)
    norms = vstar.norm(dim=0)
    skipped = norms > ANCHOR_SKIP_FACTOR * reference
    scaled = vstar * (reference / (norms + 1e-10))
    anchored = torch.where(skipped[None, :], v0, scaled)
    return (h - v0) + anchored, skipped

"""Weight updates of the locate-and-edit family, in (out, in) orientation, solved without explicit inverses.

Notation (per edited layer): K ``[d_in, n]`` keys of the batch, R ``[d_out, n]`` residuals
(target values minus current outputs, spread over the layers), C0 ``[d_in, d_in]`` = E[k k^T] over
generic text, Kp Kp^T ``[d_in, d_in]`` the Gram matrix of earlier edits' keys. All solves run in
float64 and the result is cast back to the weight's dtype by the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _spd_solve(a: Tensor, b: Tensor) -> Tensor:
    """``a^{-1} b`` for symmetric positive-definite ``a`` via Cholesky (LU fallback if not numerically PD)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    return torch.linalg.solve(a, b)


def rome_rank_one(k_u: Tensor, k: Tensor, residual: Tensor, c0: Tensor) -> Tensor:
    """ROME's rank-one update (Meng et al. 2022, eq. 2):

        dW = residual (C0^{-1} k_u)^T / ((C0^{-1} k_u)^T k)

    with ``residual`` = v* minus the projection's current output at key ``k`` (bias included), so
    that the edited projection maps ``k`` to v*: dW k = residual. ROME takes ``k_u`` the averaged
    key and ``k`` the bare prompt's; r-ROME both the averaged one. ``k_u``, ``k`` [d_in],
    ``residual`` [d_out], ``c0`` [d_in, d_in] -> ``Float64[Tensor, "d_out d_in"]``.
    """
    left = _spd_solve(c0.double(), k_u.double()[:, None])[:, 0]  # C0^{-1} k_u (ROME's u, unnormalized)
    return torch.outer(residual.double(), left) / (left @ k.double())


def memit_update(r: Tensor, k: Tensor, c0: Tensor, lam: float) -> Tensor:
    """MEMIT (Meng et al. 2023, eq. 14): dW = R K^T (lambda C0 + K K^T)^{-1}."""
    k, r = k.double(), r.double()
    a = lam * c0.double() + k @ k.T
    return r @ _spd_solve(a, k).T


def emmet_update(r: Tensor, k: Tensor, c_factor: Tensor, eps: float) -> Tensor:
    """EMMET (Gupta et al. 2024, equality-constrained batch editing):

        dW = R (K^T C^{-1} K + eps I)^{-1} K^T C^{-1}

    ``c_factor`` is the Cholesky factor of C (lambda C0, plus earlier edits' Kp Kp^T in sequential EMMET).
    """
    k, r = k.double(), r.double()
    y = torch.cholesky_solve(k, c_factor)  # C^{-1} K  [d_in, n]
    m = k.T @ y + eps * torch.eye(k.shape[1], dtype=k.dtype, device=k.device)
    return r @ torch.linalg.solve(m, y.T)


def null_space_projector(c0: Tensor, threshold: float) -> Tensor:
    """AlphaEdit (Fang et al. 2025, eq. 6): P = U_0 U_0^T over the eigenvectors of C0 whose eigenvalue is below ``threshold``."""
    eigenvalues, eigenvectors = torch.linalg.eigh(c0.double())
    basis = eigenvectors[:, eigenvalues < threshold]
    return basis @ basis.T


def alphaedit_update(r: Tensor, k: Tensor, projector: Tensor, prev_gram: Tensor, alpha: float) -> Tensor:
    """AlphaEdit (Fang et al. 2025, eq. 9): dW = R K^T P (Kp Kp^T P + K K^T P + alpha I)^{-1}.

    The result satisfies dW = dW P, so dW K0 ~ 0 for the preserved keys K0.
    """
    k, r, p = k.double(), r.double(), projector.double()
    m = (prev_gram.double() + k @ k.T) @ p + alpha * torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    # dW M = R K^T P  <=>  M^T dW^T = P K R^T  (P symmetric)
    return torch.linalg.solve(m.T, p @ k @ r.T).T


def encore_update(r: Tensor, k: Tensor, c0: Tensor, prev_gram: Tensor, lam_p: float, lam_n: float) -> Tensor:
    """ENCORE (Gupta et al. 2025): dW = R K^T (lambda_p C0 + lambda_n I + Kp Kp^T + K K^T)^{-1},

    the minimizer of lambda_p||dW K0||^2 + ||dW Kp||^2 + ||(W + dW) K - Z||^2 + lambda_n ||dW||_F^2.
    """
    k, r = k.double(), r.double()
    eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    a = lam_p * c0.double() + lam_n * eye + prev_gram.double() + k @ k.T
    return r @ _spd_solve(a, k).T

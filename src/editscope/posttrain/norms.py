"""Norms of every weight matrix during post-training, under the run-folder metric keys.

``weight/<param>/fro`` is ‖W‖_F and ``weight/<param>/delta_fro`` is ‖W − W0‖_F, with ``<param>`` the
parameter's name in the plain model (``model.layers.4.mlp.down_proj.weight``). For a LoRA model the
matrix is the merged ``W0 + (alpha / r) B A``, computed by peft's own ``get_delta_weight`` (the
update ``merge_and_unload`` adds), so the figures equal those of the merged checkpoint.
``weight/<param>/cross`` is 2⟨W0, W − W0⟩, the first-order part of the norm change:
‖W‖² − ‖W0‖² = 2⟨W0, ΔW⟩ + ‖ΔW‖². Early in training ‖ΔW‖² is second order and the sign of the
change follows the cross term; the norm grows for sure only once ‖ΔW‖² outweighs it.
All are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn


def base_model(model: nn.Module) -> nn.Module:
    """The plain transformers model inside a peft wrapper (or ``model`` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


@torch.no_grad()
def current_matrices(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, W)`` for every 2-D weight of the model as it computes now (LoRA updates merged in)."""
    base = base_model(model)
    lora = _lora_layers(base)
    for name, module in lora.items():
        weight = module.base_layer.weight
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight = weight + module.get_delta_weight(adapter)
        yield f"{name}.weight", weight
    for name, param in base.named_parameters():
        if param.ndim != 2 or "lora_" in name or ".base_layer." in name:
            continue
        yield name, param


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every matrix (W0, the reference of ``delta_fro``)."""
    return {name: w.detach().clone() for name, w in current_matrices(model)}


def fro(matrix: Tensor) -> float:
    """‖W‖_F, accumulated in float64."""
    return float(torch.linalg.vector_norm(matrix.detach().double()))


def delta_fro(matrix: Tensor, reference: Tensor) -> float:
    """‖W − W0‖_F, the difference and its norm in float64."""
    return float(torch.linalg.vector_norm(matrix.detach().double() - reference.double().to(matrix.device)))


def cross_term(matrix: Tensor, reference: Tensor) -> float:
    """2⟨W0, W − W0⟩ (Frobenius inner product), in float64."""
    w0 = reference.double().to(matrix.device)
    return 2.0 * float((w0 * (matrix.detach().double() - w0)).sum())


def matrix_norms(model: nn.Module, reference: Mapping[str, Tensor]) -> dict[str, float]:
    """``weight/<param>/fro``, ``delta_fro`` and ``cross`` for every matrix of ``reference``."""
    out: dict[str, float] = {}
    seen = set()
    for name, matrix in current_matrices(model):
        if name not in reference:
            continue
        seen.add(name)
        out[f"weight/{name}/fro"] = fro(matrix)
        out[f"weight/{name}/delta_fro"] = delta_fro(matrix, reference[name])
        out[f"weight/{name}/cross"] = cross_term(matrix, reference[name])
    missing = sorted(set(reference) - seen)
    if missing:
        raise KeyError(f"matrices of the reference missing from the model: {missing[:5]}")
    return out

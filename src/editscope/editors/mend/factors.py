"""The inputs of MEND: each edited layer's inputs ``u`` and output gradients ``δ``, read with hooks.

MEND needs no weight gradient (Mitchell et al. 2022, Sec. 3.1): for ``y = W u`` the gradient is
``Σ_t δ_t u_tᵀ``, so one forward pass that records every edited layer's input and one backward pass
to a zero "probe" added to its output (``∂L/∂probe = ∂L/∂y = δ``) give everything. The model's
parameters are never touched, nor their ``requires_grad`` flags.

The edited model is run the same way: a hook adds ``ΔW x`` to each edited layer's output. MEND's
update is low-rank (``ΔW = Dᵀ U`` with ``D = −α δ̃``, ``U = ũ``, one row per token), so the hook adds
``(x Uᵀ) D`` without forming ``ΔW`` -- and each row of a batch can carry its own edit (``owner``).
Hooks work on the (out, in) orientation, so GPT-2's transposed ``Conv1D`` needs no special case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from editscope.editors.mend.network import WeightSlot
from editscope.models.hooks import hooks
from editscope.models.spec import ModelSpec


@dataclass(frozen=True)
class EditSite:
    """An edited matrix: parameter name, module path, block index, and its (out, in) shape as a :class:`WeightSlot`."""

    name: str
    path: str
    layer: int
    slot: WeightSlot


def resolve_layers(model: nn.Module, spec: ModelSpec, layers: Sequence[int]) -> tuple[int, ...]:
    """Block indices with negative ones counted from the end (``-1`` = last block); each must exist."""
    n = spec.num_layers(model)
    resolved = tuple(layer + n if layer < 0 else layer for layer in layers)
    for given, layer in zip(layers, resolved):
        if not 0 <= layer < n:
            raise ValueError(f"layer {given} does not exist: the model has layers 0..{n - 1}")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers {tuple(layers)} name a block twice")
    return resolved


def edit_sites(model: nn.Module, spec: ModelSpec, layers: Sequence[int], parts: Sequence[str]) -> list[EditSite]:
    """The matrices ``parts`` (spec attribute names, e.g. ``mlp_in``, ``mlp_out``) of blocks ``layers``."""
    sites = []
    for layer in resolve_layers(model, spec, layers):
        for part in parts:
            if not isinstance(getattr(spec, part, None), str):
                raise ValueError(f"{part!r} is not a block part of the {spec.name} spec (e.g. mlp_in, mlp_out, attn_out)")
            name = spec.weight_name(layer, part)
            weight = spec.as_out_in(model.get_parameter(name))
            if weight.dim() != 2:
                raise ValueError(f"{name} is not a matrix (shape {tuple(weight.shape)})")
            out_features, in_features = weight.shape
            sites.append(EditSite(name, spec.module_path(layer, part), layer, WeightSlot(name, int(out_features), int(in_features))))
    return sites


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else next(iter(kwargs.values()))


@dataclass(frozen=True)
class GradientFactors:
    """Per edited weight name: inputs ``u`` ``[rows, pos, in]`` and output gradients ``δ`` ``[rows, pos, out]`` (detached)."""

    u: dict[str, Tensor]
    delta: dict[str, Tensor]


def gradient_factors(
    model: PreTrainedModel,
    sites: Sequence[EditSite],
    forward_kwargs: Mapping[str, Any],
    loss_fn: Callable[[Tensor], Tensor],
) -> tuple[GradientFactors, Tensor]:
    """One forward and backward pass: ``(u, δ)`` of every site for the scalar ``loss_fn(logits)``, and the detached logits."""
    inputs: dict[str, Tensor] = {}
    probes: dict[str, Tensor] = {}

    def make(name: str) -> Callable:
        def probe(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
            if name in probes:
                raise RuntimeError(f"{name}: the module ran twice in one forward pass; MEND expects one call")
            inputs[name] = _first_input(args, kwargs).detach()
            probes[name] = torch.zeros_like(output, requires_grad=True)
            return output + probes[name]

        return probe

    with torch.enable_grad(), hooks(model, post={site.path: make(site.name) for site in sites}):
        logits = model(**forward_kwargs).logits
        loss = loss_fn(logits)
        grads = torch.autograd.grad(loss, [probes[site.name] for site in sites], allow_unused=True)
    delta = {
        site.name: (g if g is not None else torch.zeros_like(probes[site.name])).detach() for site, g in zip(sites, grads)
    }
    return GradientFactors(inputs, delta), logits.detach()


def tokens_of(values: Tensor, mask: Tensor) -> Tensor:
    """The rows of ``values`` [rows, pos, d] at real tokens (``mask`` [rows, pos] is 1), in row order: [tokens, d]."""
    return values[mask.bool()]


def pack_groups(values: Tensor, group: Tensor, groups: int) -> Tensor:
    """Token rows ``values`` [tokens, d] into ``[groups, max tokens per group, d]``, zero-padded.

    ``group[t]`` is token ``t``'s group; the order within a group is kept. Differentiable in ``values``.
    """
    order = torch.argsort(group, stable=True)
    sorted_group = group[order]
    counts = torch.bincount(group, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(group.shape[0], device=group.device) - starts[sorted_group]
    out = values.new_zeros((groups, int(counts.max()) if group.numel() else 0, values.shape[1]))
    return out.index_put((sorted_group, within), values[order])


@contextlib.contextmanager
def low_rank_edits(
    model: PreTrainedModel, sites: Sequence[EditSite], factors: Mapping[str, tuple[Tensor, Tensor]], owner: Tensor
) -> Iterator[None]:
    """Run the model as if ``W += Dᵀ U`` of group ``owner[r]`` were applied for batch row ``r``.

    ``factors[name] = (U, D)`` with ``U`` ``[groups, n, in]`` and ``D`` ``[groups, n, out]`` (step size
    folded into ``D``; zero rows are padding). Sites missing from ``factors`` run unedited.
    """

    def make(name: str) -> Callable:
        u, d = factors[name]
        u_rows, d_rows = u[owner], d[owner]  # [rows, n, in], [rows, n, out]

        def edit(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
            x = _first_input(args, kwargs)
            coeff = torch.bmm(x.to(u_rows.dtype), u_rows.transpose(1, 2))  # [rows, pos, n]
            return output + torch.bmm(coeff, d_rows).to(output.dtype)

        return edit

    with hooks(model, post={site.path: make(site.name) for site in sites if site.name in factors}):
        yield

"""Target values z* (MEMIT eq. 16 / ROME eq. 4): the vector at the edit site that makes the model say target_new.

For each request an additive vector delta_i is optimized at the subject's last token of every
prefixed prompt, at one site (the residual stream after the last edited block for MEMIT and its
descendants, the MLP output for ROME):

    L(delta_i) = mean_prompts NLL(target_new | prompt, site += delta_i)
                 + kl_factor * KL(P_0 || P_delta)  on the bare subject
                 + weight_decay * ||delta_i|| / ||h_i||^2

with ||delta_i|| clamped to ``clamp_norm_factor * ||h_i||``; then z_i = h_i + delta_i, with h_i the
site's value for the bare prompt. All requests of a batch are optimized together: one forward and
backward per step, each request with its own delta at its own positions (the losses are separable,
so this equals optimizing them one by one). Blocks below the site, and every position before the
subject's last token, do not depend on delta: they run once and each step runs only the rest of
the rows on top of them (:mod:`editscope.linalg.zpass`). MPES (most-probable early stopping, ENCORE, Gupta et al. 2025):
a request stops once target_new is the argmax at every target position of every prefixed prompt,
after ``mpes_extra_steps`` more steps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.linalg.keys import contextual_prompts
from editscope.linalg.zpass import z_pass
from editscope.models.placement import input_device
from editscope.models.spec import ModelSpec
from editscope.precision import autocast, differentiable_attention, resolve
from editscope.types import EditRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZConfig:
    """Hyperparameters of the z* optimization.

    Attributes:
        steps: maximum optimization steps (MEMIT ``v_num_grad_steps``: 20-25).
        lr: Adam learning rate on delta (MEMIT ``v_lr``: 0.5).
        kl_factor: weight of the KL term that keeps the subject's own prediction (ROME/MEMIT: 0.0625).
        weight_decay: weight of ||delta|| / ||h||^2 (MEMIT ``v_weight_decay``: 0.5; ROME 1e-3 on GPT-2).
        clamp_norm_factor: ||delta|| <= this * ||h|| (MEMIT ``clamp_norm_factor``: 0.75 on GPT-J, 4 on GPT-2 XL).
        loss_stop: stop a request once its mean target NLL is below this, in nats (MEMIT: 5e-2).
        mpes: most-probable early stopping (ENCORE) instead of the loss threshold.
        mpes_extra_steps: steps taken after the MPES condition holds (ENCORE: a few).
        autocast: precision of the forward/backward passes (:mod:`editscope.precision`): ``"auto"``
            (bf16 where the device runs it natively: about 3x faster on CPUs with AVX-512 BF16, target
            NLLs within a few hundredths of a nat of float32; float32 elsewhere, where bf16 ran 20-40x
            slower), a dtype name, or ``None`` for the model's own precision. delta, the loss and the
            solves stay float32/64.
        prefix_cache: run each step on the rows' suffixes over a cache of their prefixes
            (:class:`~editscope.linalg.zpass.CachedPrefix`); ``False`` runs whole rows
            (:class:`~editscope.linalg.zpass.FullRows`). The two agree to float rounding.
    """

    steps: int = 25
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    loss_stop: float = 5e-2
    mpes: bool = False
    mpes_extra_steps: int = 2
    autocast: str | None = "auto"
    prefix_cache: bool = True


@dataclass(frozen=True)
class ZResult:
    """z* per request (``Float[Tensor, "d n"]``), the site's unedited value h, and per-request steps."""

    z: Tensor
    h: Tensor
    steps: tuple[int, ...]
    final_nll: tuple[float, ...]


def _site_path(spec: ModelSpec, layer: int, site: Literal["residual", "mlp_out"]) -> str:
    return spec.layer_path(layer) if site == "residual" else spec.module_path(layer, "mlp_out")


def _rows_of(requests: Tensor, n: int, t: int) -> Tensor:
    """Batch rows of ``requests`` (indices): their ``t`` rewriting rows (request-major), then their KL rows."""
    rewrite = (requests[:, None] * t + torch.arange(t, device=requests.device)).reshape(-1)
    return torch.cat([rewrite, n * t + requests])


def compute_z(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    config: ZConfig,
    *,
    site: Literal["residual", "mlp_out"] = "residual",
) -> ZResult:
    """Optimize z* for all ``requests`` at once at ``site`` of block ``layer`` (see the module docstring).

    A request that has stopped leaves the batch: later steps run only the rows of the active ones.
    """
    device = input_device(model)
    n, t = len(requests), len(templates)
    prompts, ends = contextual_prompts(requests, templates)
    # rows: n*t rewriting rows (request-major), then n KL rows (the bare subject)
    kl_prompts = [r.subject for r in requests]
    path = _site_path(spec, layer, site)
    last_skipped = layer if site == "residual" else layer - 1
    precision = resolve(config.autocast, device, "z.autocast")
    with torch.no_grad():
        rows_pass = z_pass(model, spec, path, last_skipped, tokenizer, prompts + kl_prompts, ends + [len(s) for s in kl_prompts],
                           [r.target_new for r in requests for _ in templates] + [None] * n, prefix_cache=config.prefix_cache)
    full_owner = torch.cat([torch.arange(n, device=device).repeat_interleave(t), torch.arange(n, device=device)])

    d_model = int(spec.mlp_out_weight(model, layer).shape[0])  # both sites are d_model wide
    delta = torch.zeros((n, d_model), device=device, dtype=torch.float32, requires_grad=True)
    h = rows_pass.site_values[: n * t : t]  # bare-prompt rows
    h_norm = h.norm(dim=1)
    optimizer = torch.optim.Adam([delta], lr=config.lr)
    kl_init = torch.zeros((n, 0), device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    steps = [config.steps] * n
    extra = [-1] * n
    nll = torch.zeros(n, device=device)
    stack, current = contextlib.ExitStack(), None
    with stack:
        for step in range(config.steps):
            ids = active.nonzero().squeeze(1)
            if current is None or not torch.equal(current, ids):  # (re)build the batch of the active requests
                stack.close()
                current, rows = ids, _rows_of(ids, n, t)
                rows_pass.activate(stack, rows, delta, full_owner[rows])
            m = len(ids)
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad(), autocast(device, precision), differentiable_attention(device):
                out = rows_pass.logits(m * t)
                token_lp = torch.log_softmax(out.target, dim=-1).gather(1, out.target_ids[:, None]).squeeze(1)
                counts = torch.zeros(m * t, device=device).index_add_(0, out.target_row, torch.ones_like(token_lp))
                row_nll = torch.zeros(m * t, device=device).index_add(0, out.target_row, -token_lp) / counts
                active_nll = row_nll.reshape(m, t).mean(dim=1)
                kl_lp = torch.log_softmax(out.kl, dim=-1)  # the bare subject's last token
                if step == 0:
                    kl_init = kl_lp.detach().clone()  # every request is active at step 0
                base = kl_init[ids]
                kl = (base.exp() * (base - kl_lp)).sum(dim=-1)
                decay = config.weight_decay * delta[ids].norm(dim=1) / h_norm[ids] ** 2
                per_request = active_nll + config.kl_factor * kl + decay
            nll = nll.index_copy(0, ids, active_nll.detach())
            misses = (out.target.argmax(dim=-1) != out.target_ids).float()
            hits = (torch.zeros(m * t, device=device).index_add_(0, out.target_row, misses) == 0).reshape(m, t).all(dim=1)
            keep_going = torch.ones(m, dtype=torch.bool, device=device)
            for j, i in enumerate(ids.tolist()):
                done = False
                if config.mpes:
                    if extra[i] < 0 and bool(hits[j]):
                        extra[i] = config.mpes_extra_steps
                    if extra[i] == 0:
                        done = True
                    elif extra[i] > 0:
                        extra[i] -= 1
                elif float(active_nll[j].detach()) < config.loss_stop:
                    done = True
                if done:
                    active[i] = False
                    keep_going[j] = False
                    steps[i] = step
            logger.debug("z step %d: nll %s delta %s active %d", step, [round(float(x), 3) for x in nll], [round(float(x), 3) for x in delta.detach().norm(dim=1)], int(active.sum()))
            if not bool(active.any()):
                break
            with torch.enable_grad():
                per_request[keep_going].sum().backward()
            frozen = delta.detach()[~active].clone()
            optimizer.step()
            with torch.no_grad():
                delta[~active] = frozen
                limit = config.clamp_norm_factor * h_norm
                norms = delta.norm(dim=1)
                scale = torch.where(norms > limit, limit / norms.clamp_min(1e-12), torch.ones_like(norms))
                delta.mul_(scale[:, None])
    z = (h + delta.detach()).T.contiguous()
    return ZResult(z=z, h=h.T.contiguous(), steps=tuple(steps), final_nll=tuple(float(x) for x in nll))

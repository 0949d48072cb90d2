"""Target values z* (MEMIT eq. 16 / ROME eq. 4): the vector at the edit site that makes the model say target_new.

For each request an additive vector delta_i is optimized at the subject's last token of every
prefixed prompt, at one site (the residual stream after the last edited block for MEMIT and its
descendants, the MLP output for ROME):

    L(delta_i) = mean_prompts NLL(target_new | prompt, site += delta_i)
                 + kl_factor * KL(P_delta || P_0)  at the bare subject's last token
                 + weight_decay * ||delta_i|| / ||h_i||^2

with ||delta_i|| clamped to ``clamp_norm_factor * ||h_i||`` after every step; then z_i = h_i +
delta_i, with h_i the site's value for the bare prompt. As the reference code (kmeng01/memit
``compute_z``, kmeng01/rome ``compute_v``) does: the NLL of a prompt is the mean over its target
tokens and the prompts weigh equally; the KL is the edited distribution's against the unedited
one (``kl_div(p_0, p_delta)`` there); a request stops as soon as its total loss is below
``loss_stop`` (checked before the step), and at most ``steps - 1`` optimizer steps are taken (the
last pass only evaluates).

MPES (most-probable early stopping, ENCORE, Gupta et al. 2025; scalable-model-editing/encore
``compute_z``): a step counts as a hit when target_new is the argmax at every target position of
every prefixed prompt (the bare prompt is not checked); the request stops at its ``mpes_hits``-th
hit (hits need not be consecutive), the loss stop and the step cap still apply. (ENCORE's code
tests ``num_correct == 5``, which is this rule for single-token targets; for longer targets its
EMMET copy checks every token, as here.)

The requests of a batch are optimized together, in groups of at most :data:`GROUP`: one forward and
backward per step, each request with its own delta at its own positions (the losses are separable,
so this equals optimizing them one by one, and a large batch runs as consecutive groups). Blocks
below the site, and every position before the subject's last token, do not depend on delta: they
run once and each step runs only the rest of the rows on top of them (:mod:`editscope.linalg.zpass`).
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

from editscope.config import ConfigError
from editscope.linalg.keys import contextual_prompts
from editscope.linalg.zpass import z_pass
from editscope.models.placement import input_device
from editscope.models.spec import ModelSpec
from editscope.precision import autocast, differentiable_attention, resolve
from editscope.types import EditRequest

logger = logging.getLogger(__name__)

GROUP = 10
"""The most requests optimized in one packed pass. Each request's optimization is independent, so groups give the
result of one pass (to float rounding); the packed attention's cost grows with the square of the packed length,
so the cost per request rises with the group (CounterFact, MEMIT's templates, 2 threads, bf16 on an AVX512-BF16 CPU:
0.32 s per request and 3-step z* at 10 requests, 0.58 s at 40 in one pass; 1 thread, float32 on an AVX2 EPYC, 16
requests to full convergence: 0.30 s per request-step in groups of 16, 0.26 in groups of 8)."""


def balanced_groups(n: int, most: int = GROUP) -> list[range]:
    """Split ``n`` requests into the fewest consecutive groups of at most ``most``, sizes differing by at most
    one: a batch of 100 runs as ten groups of 10, each as costly per request as a batch of 10 (not six of
    16 and one of 4)."""
    count = max(1, -(-n // most))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(count)]


@dataclass(frozen=True)
class ZConfig:
    """Hyperparameters of the z* optimization. Defaults are MEMIT's (kmeng01/memit
    ``hparams/MEMIT/EleutherAI_gpt-j-6B.json``); ROME's differ in ``steps`` and ``clamp_norm_factor``.

    Attributes:
        steps: forward passes at most (``v_num_grad_steps``: 20 on GPT-2 XL, 25 on GPT-J and
            Llama-3-8B); ``steps - 1`` optimizer steps at most.
        lr: Adam learning rate on delta (``v_lr``: 0.5 in MEMIT's, ROME's and ENCORE's files; 0.1 in
            AlphaEdit's Llama3-8B files).
        kl_factor: weight of KL(P_delta || P_0) at the bare subject (``kl_factor``: 0.0625 in every file).
        weight_decay: weight of ||delta|| / ||h||^2 (``v_weight_decay``: 0.5 in MEMIT's and ROME's
            GPT-2 XL / GPT-J files; 1e-3 in AlphaEdit's Llama3-8B ROME file).
        clamp_norm_factor: ||delta|| <= this * ||h|| (``clamp_norm_factor``: 0.75 in every MEMIT,
            AlphaEdit, EMMET and ENCORE file; 4 in ROME's).
        loss_stop: a request stops once its total loss (NLL + KL + weight decay) is below this, in
            nats (5e-2, hard-coded in the reference ``compute_z``).
        mpes: most-probable early stopping (ENCORE).
        mpes_hits: MPES stops a request at its this-many-th hit, ENCORE's ``|prob_cutoff|`` (4 on
            GPT-2 XL, 3 on Llama-2-7B, 2 on Llama-3-8B in scalable-model-editing/encore ``hparams/ENCORE``).
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
    clamp_norm_factor: float = 0.75
    loss_stop: float = 5e-2
    mpes: bool = False
    mpes_hits: int = 2
    autocast: str | None = "auto"
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.mpes_hits < 1:
            raise ConfigError(f"z: steps and mpes_hits must be >= 1, got steps={self.steps}, mpes_hits={self.mpes_hits}")


@dataclass(frozen=True)
class ZResult:
    """z* per request (``Float[Tensor, "d n"]``), the site's unedited value h, and per-request steps."""

    z: Tensor
    h: Tensor
    steps: tuple[int, ...]
    final_nll: tuple[float, ...]


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last axis from log-probabilities: ``[..., vocab] -> [...]``.

    z* takes p the edited and q the unedited distribution, KL(P_delta || P_0), as the reference
    ``kl_div(kl_distr_init, kl_log_probs, log_target=True)`` computes (ROME eq. 4's D_KL(P_G' || P_G)).
    """
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def stop_rule(hits: int, hit: bool, loss: float, step: int, config: ZConfig) -> tuple[int, bool]:
    """One request after the forward pass of ``step`` (0-based): its MPES hit count so far and whether
    it stops now, before this step's optimizer step (the reference ``compute_z``'s three breaks):
    at its ``mpes_hits``-th hit (hits need not be consecutive), when its total ``loss`` is below
    ``loss_stop``, or at the last pass (so at most ``steps - 1`` optimizer steps)."""
    hits += int(config.mpes and hit)
    done = (config.mpes and hits >= config.mpes_hits) or loss < config.loss_stop or step == config.steps - 1
    return hits, done


def mpes_checked(n_templates: int) -> Tensor:
    """Which rewriting rows (templates; the bare one first) MPES checks: every prefixed one (ENCORE's
    ``log_probs[1:]`` drops the bare prompt), or the bare prompt where it is the only one."""
    if n_templates == 1:
        return torch.ones(1, dtype=torch.bool)
    return torch.arange(n_templates) > 0


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
    """Optimize z* for ``requests`` at ``site`` of block ``layer``, :data:`GROUP` at a time (module docstring).

    A request that has stopped leaves the batch: later steps run only the rows of the active ones.
    """
    if len(requests) > GROUP:
        parts = [compute_z(model, tokenizer, spec, layer, requests[g.start : g.stop], templates, config, site=site)
                 for g in balanced_groups(len(requests), GROUP)]  # fmt: skip
        return ZResult(z=torch.cat([p.z for p in parts], dim=1), h=torch.cat([p.h for p in parts], dim=1),
                       steps=tuple(s for p in parts for s in p.steps), final_nll=tuple(x for p in parts for x in p.final_nll))  # fmt: skip
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
    steps = [config.steps - 1] * n
    nll = torch.zeros(n, device=device)
    hits = [0] * n
    checked = mpes_checked(t).to(device)
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
                kl = kl_divergence(kl_lp, kl_init[ids])
                decay = config.weight_decay * delta[ids].norm(dim=1) / h_norm[ids] ** 2
                per_request = active_nll + config.kl_factor * kl + decay
            nll = nll.index_copy(0, ids, active_nll.detach())
            misses = (out.target.argmax(dim=-1) != out.target_ids).float()
            row_hit = (torch.zeros(m * t, device=device).index_add_(0, out.target_row, misses) == 0).reshape(m, t)
            step_hit = row_hit[:, checked].all(dim=1)
            keep_going = torch.ones(m, dtype=torch.bool, device=device)
            for j, i in enumerate(ids.tolist()):
                hits[i], done = stop_rule(hits[i], bool(step_hit[j]), float(per_request[j].detach()), step, config)
                if done:
                    active[i] = False
                    keep_going[j] = False
                    steps[i] = step  # optimizer steps taken
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

"""Training MEND's hypernetwork (Mitchell et al. 2022, Sec. 3.2 and Algorithm 1).

Each step takes ``batch_size`` training requests and, for each (alone, or ``group_size`` of them
together), makes the edit MEND would make and scores the edited model:

1. inner pass on the unedited model: ``u`` and ``δ`` of every edited matrix for the NLL of
   ``target_new`` after the prompt (each request's mean token NLL, so requests do not mix);
2. ``(ũ, δ̃) = g(u, δ)`` and the low-rank edit ``ΔW = −α Σ_t δ̃_t ũ_tᵀ`` (see ``network``);
3. outer pass on the edited model: the edit loss ``L_e`` (NLL of ``target_new`` on the edit prompt
   and one paraphrase, Eq. 4a) and the locality loss ``L_loc = KL(p_θ ‖ p_θ̃)`` on a neighborhood
   prompt at its answer's positions (Eq. 4b);
4. ``L = c_e L_e + c_loc L_loc`` (Eq. 4c) is minimized over the hypernetwork and the step sizes
   with AdamW; the model stays frozen.

Both passes run on one batch of rows (edit, paraphrase, locality); the blocks below the first
edited one do not depend on the edit and run once per step (replayed from a cache).
The requests of step ``s`` depend only on ``(seed, s)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError, from_dict, to_dict
from editscope.editors.mend.checkpoint import MENDCheckpoint, save_checkpoint
from editscope.editors.mend.factors import edit_sites, gradient_factors, low_rank_edits, pack_groups, tokens_of
from editscope.editors.mend.network import MENDNetwork
from editscope.evaluation.scoring import TargetBatch, target_batch
from editscope.linalg.values import replay_lower_blocks
from editscope.models.fingerprint import model_fingerprint
from editscope.models.hooks import capture_outputs
from editscope.models.spec import spec_for_config
from editscope.precision import autocast
from editscope.types import EditRequest

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class MENDTrainConfig:
    """Hyperparameters of MEND training; saved with the checkpoint (the network's shape comes from here).

    Attributes:
        layers: decoder blocks whose matrices are edited; negative counts from the end. MEND edits
            the MLPs of the last 3 blocks (Mitchell et al. 2022, Sec. 5.1).
        parts: which matrices of each block, as ``ModelSpec`` part names (``mlp_in`` = up projection,
            ``mlp_out`` = down projection, ``attn_out``). MEND: the MLP weights.
        rank: inner rank of each low-rank layer of ``g`` (count). MEND's implementation: 1920; smaller
            here for CPU training time.
        hidden_layers: hidden (ReLU) layers of ``g``; ``g`` has this many plus one. MEND: 1.
        step_size_init: initial per-matrix step size ``α_ℓ`` (weight units per unit pseudo-gradient). MEND: 1e-4.
        steps: training steps (count). 2500: about 23 min for SmolLM2-135M at 1.84 steps/s (one
            thread, bf16 autocast, this project's 2-core CPU), so within 30 min on a shared machine.
        batch_size: requests per step (count); each is edited on its own unless ``group_size`` > 1.
        group_size: requests edited together (their updates summed, as MEND's batched edits). MEND: 1.
        lr: AdamW learning rate of the network. MEND: 1e-6 on 2.7B-12B models with 100k+ steps
            (with ``V`` ~ N(0, 1)); here ``V`` is scaled (see ``LowRankResidual``) and 3e-4 learns within
            a few hundred steps on SmolLM2, where 1e-3 diverged after about 350 steps.
        step_size_lr: AdamW learning rate of the log step sizes (so a relative change per step). MEND
            learns the step sizes themselves with ``lr_lr`` 1e-4 from 1e-4, which can drive them to zero
            in one step on a short budget.
        lr_final: both learning rates follow a cosine from their value at step 0 to this fraction of
            it at ``steps`` (1 keeps them constant, as MEND does; a decay steadies the end of a short run).
        weight_decay: AdamW decoupled weight decay on the network (not the step sizes). MEND: 0.
        grad_clip: gradient-norm clip of each update. MEND: 100; 1 here (typical norms 0.5-1.5 on
            SmolLM2), which kept training stable where 100 let rare large gradients derail it.
        edit_weight: ``c_e``, weight of the edit loss (Eq. 4c). MEND: 0.1. On the demo set (whose
            neighborhood prompts share the edit prompt's template) 0.1 left held-out efficacy at 0.67
            and 1.0 cost 0.42 of neighborhood score (200 steps at lr 1e-3); 0.3 gave 0.93 efficacy,
            0.99 paraphrase and a 0.13 neighborhood drop (900 steps at lr 3e-4, 30 held-out edits).
        loc_weight: ``c_loc``, weight of the locality KL (Eq. 4c). MEND: 1.
        held_out: fraction of the data set aside for evaluation, never trained on (deterministic in ``seed``).
        seed: seed of the network's initialization, the held-out split and the batch order.
        checkpoint_every: save a checkpoint every this many steps (and at the end).
        autocast: dtype name for autocast of the model's passes, or ``None`` for the model's own precision.
            ``"bfloat16"``: about 3x faster training on this project's CPUs (SmolLM2-135M), with the
            first step's losses within 0.01 nats of float32; the editor reads ``u``, ``δ`` the same way.
            The hypernetwork itself always computes in float32.
    """

    layers: tuple[int, ...] = (-3, -2, -1)
    parts: tuple[str, ...] = ("mlp_in", "mlp_out")
    rank: int = 256
    hidden_layers: int = 1
    step_size_init: float = 1e-4
    steps: int = 2500
    batch_size: int = 8
    group_size: int = 1
    lr: float = 3e-4
    step_size_lr: float = 1e-2
    lr_final: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    edit_weight: float = 0.3
    loc_weight: float = 1.0
    held_out: float = 0.2
    seed: int = 0
    checkpoint_every: int = 100
    autocast: str | None = "bfloat16"

    def __post_init__(self) -> None:
        where = type(self).__name__
        if not self.layers or not self.parts:
            raise ConfigError(f"{where}: layers and parts must not be empty")
        for name in ("rank", "steps", "batch_size", "group_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.hidden_layers < 0:
            raise ConfigError(f"{where}.hidden_layers: must be >= 0, got {self.hidden_layers}")
        for name in ("lr", "step_size_lr", "grad_clip", "step_size_init"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "edit_weight", "loc_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr_final <= 1:
            raise ConfigError(f"{where}.lr_final: must be in (0, 1], got {self.lr_final}")
        if not 0 <= self.held_out < 1:
            raise ConfigError(f"{where}.held_out: must be in [0, 1), got {self.held_out}")

    @staticmethod
    def from_mapping(data: dict[str, Any], where: str = "mend train") -> MENDTrainConfig:
        return from_dict(MENDTrainConfig, data, where=where)


RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every"})
"""Config fields a resumed training may change (a new ``steps`` stretches the learning-rate schedule)."""


def split_requests(requests: Sequence[EditRequest], held_out: float, seed: int) -> tuple[list[EditRequest], list[EditRequest]]:
    """(train, held-out): the ``round(held_out · n)`` requests with the smallest ``sha256(seed/id)`` are held out.

    Depends only on the ids and the seed, not on the file order; both lists keep the data's order.
    """
    count = round(held_out * len(requests))
    ranked = sorted(requests, key=lambda r: hashlib.sha256(f"{seed}/{r.id}".encode()).hexdigest())
    held_ids = {r.id for r in ranked[:count]}
    return [r for r in requests if r.id not in held_ids], [r for r in requests if r.id in held_ids]


def locality_pool(train: Sequence[EditRequest], held_out: Sequence[EditRequest]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the locality loss: the training requests' neighborhood prompts,
    except those that are a held-out request's own prompt; requests without neighbors add their own true fact."""
    excluded = {r.text for r in held_out}
    pool = [(n.prompt, n.answer) for r in train for n in r.neighborhood if n.prompt not in excluded]
    pool += [(r.text, r.target_true) for r in train if not r.neighborhood]
    return list(dict.fromkeys(pool))


@dataclass(frozen=True)
class StepRows:
    """One step's rows: the batch, which rows are edit/paraphrase/locality rows, and each row's edit group."""

    batch: TargetBatch
    edit_rows: Tensor
    paraphrase_rows: Tensor
    loc_rows: Tensor
    owner: Tensor
    groups: int


def per_row_nll(logits: Tensor, batch: TargetBatch, rows: Tensor) -> Tensor:
    """Mean NLL (nats) of each row's target tokens, ``Float[Tensor, "rows"]``."""
    logprobs = torch.log_softmax(logits[rows].float(), dim=-1)
    picked = logprobs.gather(2, batch.target_ids[rows, :, None]).squeeze(2)
    mask = batch.target_mask[rows]
    return -(picked * mask).sum(1) / mask.sum(1)


def locality_kl(base_logits: Tensor, edited_logits: Tensor, batch: TargetBatch, rows: Tensor) -> Tensor:
    """``KL(p_θ ‖ p_θ̃)`` (MEND Eq. 4b) averaged over the target positions of ``rows`` (a scalar)."""
    base = torch.log_softmax(base_logits[rows].float(), dim=-1)
    edited = torch.log_softmax(edited_logits[rows].float(), dim=-1)
    kl = (base.exp() * (base - edited)).sum(-1)  # [rows, keep]
    mask = batch.target_mask[rows]
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def lr_factor(step: int, steps: int, final: float) -> float:
    """Cosine schedule: 1 at step 0, ``final`` at ``steps`` (Loshchilov & Hutter 2017, without restarts)."""
    progress = min(step / steps, 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MENDTrainer:
    """Trains a :class:`MENDNetwork` for one model on a list of training requests."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        train: Sequence[EditRequest],
        held_out: Sequence[EditRequest],
        config: MENDTrainConfig,
        *,
        model_name: str,
        data_name: str,
    ) -> None:
        if not train:
            raise ConfigError("mend train: no training requests (is the data set empty or all held out?)")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.train_requests, self.held_out = list(train), list(held_out)
        self.model_name, self.data_name = model_name, data_name
        self.spec = spec_for_config(model.config)
        self.sites = edit_sites(model, self.spec, config.layers, config.parts)
        self.device = model.get_input_embeddings().weight.device
        self.fingerprint = model_fingerprint(model)
        self.loc_pool = locality_pool(self.train_requests, self.held_out)
        self._loc_set = set(self.loc_pool)
        if not self.loc_pool:
            raise ConfigError("mend train: no locality prompts (no neighborhood prompts outside the held-out requests)")
        self.network = MENDNetwork(
            [s.slot for s in self.sites], rank=config.rank, hidden_layers=config.hidden_layers,
            step_size_init=config.step_size_init, seed=config.seed,
        ).to(self.device)
        net_params = [p for n, p in self.network.named_parameters() if n != "log_step_sizes"]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": net_params, "lr": config.lr, "weight_decay": config.weight_decay},
                {"params": [self.network.log_step_sizes], "lr": config.step_size_lr, "weight_decay": 0.0},
            ]
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._orders: dict[int, list[int]] = {}

    # -- data ----------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.train_requests)))
            random.Random(f"{self.config.seed}/epoch/{epoch}").shuffle(order)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def requests_for(self, step: int) -> list[EditRequest]:
        """The training requests of ``step``: consecutive slices of a per-epoch shuffle."""
        n, size = len(self.train_requests), self.config.batch_size
        return [self.train_requests[self._order(i // n)[i % n]] for i in range(step * size, (step + 1) * size)]

    def rows_for(self, step: int) -> StepRows:
        requests = self.requests_for(step)
        rng = random.Random(f"{self.config.seed}/rows/{step}")
        prompts = [r.text for r in requests]
        targets = [r.target_new for r in requests]
        owners = [i // self.config.group_size for i in range(len(requests))]
        para_owner = []
        for i, r in enumerate(requests):
            if r.paraphrase_prompts:
                prompts.append(rng.choice(r.paraphrase_prompts))
                targets.append(r.target_new)
                para_owner.append(owners[i])
        loc_owner = []
        for i, r in enumerate(requests):
            choices = [(n.prompt, n.answer) for n in r.neighborhood if (n.prompt, n.answer) in self._loc_set]
            if not choices:
                choices = [pair for pair in self.loc_pool if pair[0] != r.text] or self.loc_pool
            prompt, answer = rng.choice(choices)
            prompts.append(prompt)
            targets.append(answer)
            loc_owner.append(owners[i])
        batch = target_batch(self.tokenizer, prompts, targets, self.device)
        n_edit, n_para = len(requests), len(para_owner)
        arange = torch.arange(len(prompts), device=self.device)
        return StepRows(
            batch,
            arange[:n_edit],
            arange[n_edit : n_edit + n_para],
            arange[n_edit + n_para :],
            torch.tensor(owners + para_owner + loc_owner, device=self.device),
            owners[-1] + 1,
        )

    # -- one step ------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer step of the hypernetwork; returns the step's losses."""
        cfg = self.config
        rows = self.rows_for(self.step)
        batch = rows.batch
        kwargs = {**batch.forward_kwargs(), "use_cache": False}
        first = min(site.layer for site in self.sites)
        self.network.train()
        with contextlib.ExitStack() as stack, torch.enable_grad():
            if first > 0:
                path = self.spec.layer_path(first - 1)
                with autocast(self.device, cfg.autocast):
                    cached = capture_outputs(self.model, [path], path, **kwargs)[path]
                stack.enter_context(replay_lower_blocks(self.model, self.spec, first - 1, cached))

            def inner_loss(logits: Tensor) -> Tensor:
                return per_row_nll(logits, batch, rows.edit_rows).sum()

            with autocast(self.device, cfg.autocast):
                factors, base_logits = gradient_factors(self.model, self.sites, kwargs, inner_loss)
            mask = batch.attention_mask[rows.edit_rows]
            token_group = rows.owner[rows.edit_rows][:, None].expand_as(mask)[mask.bool()]
            packed = {}
            for index, site in enumerate(self.sites):
                u = tokens_of(factors.u[site.name][rows.edit_rows], mask)
                delta = tokens_of(factors.delta[site.name][rows.edit_rows], mask)
                u_tilde, delta_tilde = self.network.transform(index, u, delta)
                scaled = -self.network.step_sizes[index] * delta_tilde
                packed[site.name] = (pack_groups(u_tilde, token_group, rows.groups), pack_groups(scaled, token_group, rows.groups))
            with autocast(self.device, cfg.autocast), low_rank_edits(self.model, self.sites, packed, rows.owner):
                edited_logits = self.model(**kwargs).logits
            edit_rows = torch.cat([rows.edit_rows, rows.paraphrase_rows])
            edit_nll = per_row_nll(edited_logits, batch, edit_rows)
            loc = locality_kl(base_logits, edited_logits, batch, rows.loc_rows)
            loss = cfg.edit_weight * edit_nll.mean() + cfg.loc_weight * loc
            for group, base in zip(self.optimizer.param_groups, (cfg.lr, cfg.step_size_lr)):
                group["lr"] = base * lr_factor(self.step, cfg.steps, cfg.lr_final)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), cfg.grad_clip)
            self.optimizer.step()
        self.step += 1
        n_edit = rows.edit_rows.shape[0]
        with torch.no_grad():
            hits = (edited_logits[rows.edit_rows].argmax(-1) == batch.target_ids[rows.edit_rows]) | (batch.target_mask[rows.edit_rows] == 0)
            pre_nll = per_row_nll(base_logits, batch, rows.edit_rows)
        metrics = {
            "loss": float(loss.detach()),
            "edit_nll": float(edit_nll[:n_edit].detach().mean()),
            "pre_nll": float(pre_nll.mean()),
            "paraphrase_nll": float(edit_nll[n_edit:].detach().mean()) if edit_nll.shape[0] > n_edit else float("nan"),
            "loc_kl": float(loc.detach()),
            "edit_acc": float(hits.all(dim=1).float().mean()),
            "grad_norm": float(grad_norm),
            "step_size": float(self.network.step_sizes.detach().mean()),
        }
        self.history.append({"step": self.step, **metrics})
        self.history = self.history[-200:]
        return metrics

    # -- loop and checkpoints ------------------------------------------------------------
    def train(self, out: str | Path | None = None, progress: Progress | None = None) -> dict[str, float]:
        """Train up to ``config.steps`` steps, saving to ``out`` every ``checkpoint_every`` steps and at the end."""
        metrics: dict[str, float] = {}
        while self.step < self.config.steps:
            metrics = self.train_step()
            if self.step % 10 == 0 or self.step == self.config.steps:
                logger.info("mend step %d/%d: %s", self.step, self.config.steps, {k: round(v, 4) for k, v in metrics.items()})
            if out is not None and (self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps):
                self.save(out)
            if progress is not None:
                progress(self.step, self.config.steps, metrics)
        return metrics

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "config": to_dict(self.config),
            "step": self.step,
            "complete": self.step >= self.config.steps,
            "data": {"source": self.data_name, "train": len(self.train_requests), "held_out_ids": [r.id for r in self.held_out]},
            "history": self.history,
            "torch_threads": torch.get_num_threads(),
        }

    def save(self, out: str | Path) -> None:
        save_checkpoint(out, self.network, self.optimizer, self.meta(), self.held_out)
        logger.info("%s: MEND checkpoint at step %d", out, self.step)

    def restore(self, checkpoint: MENDCheckpoint) -> None:
        """Continue from ``checkpoint`` (same model, data split and config up to :data:`RESUMABLE_CHANGES`)."""
        checkpoint.check_model(self.fingerprint)
        saved = checkpoint.meta["config"]
        differs = sorted(k for k, v in to_dict(self.config).items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
        if differs:
            raise ConfigError(
                f"{checkpoint.folder}: cannot resume with a different config ({', '.join(f'{k}: saved {saved.get(k)!r}, now {to_dict(self.config)[k]!r}' for k in differs)})"
            )
        held = checkpoint.meta["data"]["held_out_ids"]
        if held != [r.id for r in self.held_out] or checkpoint.meta["data"]["train"] != len(self.train_requests):
            raise ConfigError(f"{checkpoint.folder}: the data split differs from the checkpoint's; resume with the same --data")
        if checkpoint.optimizer is None:
            raise ConfigError(f"{checkpoint.folder}: no optimizer state to resume from")
        self.network.load_state_dict(checkpoint.network)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.step = checkpoint.step
        self.history = list(checkpoint.meta.get("history", []))
        threads = checkpoint.meta.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            logger.warning("%s: saved with %d torch threads, resuming with %d: not bit-identical to an uninterrupted run",
                           checkpoint.folder, threads, torch.get_num_threads())

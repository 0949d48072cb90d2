"""Training MEND's hypernetwork (Mitchell et al. 2022, Sec. 3.2 and Algorithm 1).

Each step takes ``batch_size`` training requests and, for each (alone, or ``group_size`` of them
together), makes the edit MEND would make and scores the edited model:

1. inner pass on the unedited model: ``u`` and ``δ`` of every edited matrix for the NLL of
   ``target_new`` after the prompt (each request's mean token NLL, so requests do not mix);
2. ``(ũ, δ̃) = g(u, δ)`` and the low-rank edit ``ΔW = −α Σ_t δ̃_t ũ_tᵀ`` (see ``network``);
3. outer pass on the edited model: the edit loss ``L_e`` (NLL of ``target_new`` on the edit prompt
   and one paraphrase, Eq. 4a) and the locality loss ``L_loc = KL(p_θ ‖ p_θ̃)`` (Eq. 4b), a mix of
   the KL on a neighborhood prompt at its answer's positions and the KL on windows of unrelated
   text at all their positions (see ``locality``);
4. ``L = c_e L_e + c_loc L_loc`` (Eq. 4c), plus ``c_t L_t`` (the target-lift term, see
   ``MENDTrainConfig.target_lift_weight``), is minimized over the hypernetwork and the step sizes
   with AdamW; the model stays frozen.

Both passes run on one batch of rows (edit, paraphrase, neighbor prompt); the text windows, which
are longer and need logits at every position, run as a second batch of the same step, each window
with one of the step's edits. The blocks below the first edited one do not depend on the edit and
run once per step and batch (replayed from a cache). The requests and text windows of step ``s``
depend only on ``(seed, s)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError, to_dict
from editscope.data.corpora import load_corpus
from editscope.editors.mend.checkpoint import MENDCheckpoint, save_checkpoint
from editscope.editors.mend.factors import edit_sites, gradient_factors, low_rank_edits, pack_groups, tokens_of
from editscope.editors.mend.locality import locality_kl, locality_pool, target_lift, text_locality_kl, text_pass, text_windows
from editscope.editors.mend.network import MENDNetwork
from editscope.editors.mend.train_config import MENDTrainConfig, changed_settings, saved_config
from editscope.linalg.zpass import replay_lower_blocks
from editscope.models.fingerprint import model_fingerprint
from editscope.models.hooks import capture_outputs
from editscope.models.spec import spec_for_config
from editscope.precision import autocast, precision_record, resolve
from editscope.tokens import TargetBatch, target_batch
from editscope.types import EditRequest

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]


def split_requests(requests: Sequence[EditRequest], held_out: float, seed: int) -> tuple[list[EditRequest], list[EditRequest]]:
    """(train, held-out): the ``round(held_out · n)`` requests with the smallest ``sha256(seed/id)`` are held out.

    Depends only on the ids and the seed, not on the file order; both lists keep the data's order.
    """
    count = round(held_out * len(requests))
    ranked = sorted(requests, key=lambda r: hashlib.sha256(f"{seed}/{r.id}".encode()).hexdigest())
    held_ids = {r.id for r in ranked[:count]}
    return [r for r in requests if r.id not in held_ids], [r for r in requests if r.id in held_ids]


@dataclass(frozen=True)
class StepRows:
    """One step's rows: the batch, which rows are edit/paraphrase/locality rows, each row's edit group,
    and for each locality row the edit row of the request whose neighbor it is (``loc_edit_rows``)."""

    batch: TargetBatch
    edit_rows: Tensor
    paraphrase_rows: Tensor
    loc_rows: Tensor
    owner: Tensor
    groups: int
    loc_edit_rows: Tensor


def per_row_nll(logits: Tensor, batch: TargetBatch, rows: Tensor) -> Tensor:
    """Mean NLL (nats) of each row's target tokens, ``Float[Tensor, "rows"]``."""
    logprobs = torch.log_softmax(logits[rows].float(), dim=-1)
    picked = logprobs.gather(2, batch.target_ids[rows, :, None]).squeeze(2)
    mask = batch.target_mask[rows]
    return -(picked * mask).sum(1) / mask.sum(1)


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
        self.precision = resolve(config.autocast, self.device, "MENDTrainConfig.autocast")  # autocast dtype, or None
        self.fingerprint = model_fingerprint(model)
        self.loc_pool = locality_pool(self.train_requests, self.held_out) if config.loc_text_share < 1 else []
        self._loc_set = set(self.loc_pool)
        if config.loc_text_share < 1 and not self.loc_pool:
            raise ConfigError("mend train: no locality prompts (no neighborhood prompts outside the held-out requests); "
                              "set loc_text_share=1 for unrelated text only")
        self.text_meta: dict[str, Any] | None = None
        self.windows: Tensor | None = None
        if config.loc_text_rows:
            corpus = load_corpus(config.loc_corpus, model=model, tokenizer=tokenizer, seed=config.seed)
            self.windows = text_windows(tokenizer, corpus, config.loc_text_tokens)
            self.text_meta = {**corpus.metadata, "windows": int(self.windows.shape[0])}
            logger.info("mend locality text: %d windows of %d tokens from %s", self.windows.shape[0],
                        config.loc_text_tokens, corpus.metadata.get("resolved", corpus.metadata["source"]))
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
        self.wall_s = 0.0  # training time, accumulated over resumes
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
        loc_owner, loc_edit_rows = [], []
        for i, r in enumerate(requests if self.loc_pool else ()):
            choices = [(n.prompt, n.answer) for n in r.neighborhood if (n.prompt, n.answer) in self._loc_set]
            if not choices:
                choices = [pair for pair in self.loc_pool if pair[0] != r.text] or self.loc_pool
            k = self.config.loc_neighbor_rows
            for prompt, answer in [rng.choice(choices)] if k == 1 else rng.sample(choices, min(k, len(choices))):
                prompts.append(prompt)
                targets.append(answer)
                loc_owner.append(owners[i])
                loc_edit_rows.append(i)  # edit rows come first, in request order
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
            torch.tensor(loc_edit_rows, dtype=torch.long, device=self.device),
        )

    def text_rows_for(self, step: int) -> Tensor:
        """The text windows of ``step`` (``[loc_text_rows, loc_text_tokens]`` token ids), drawn without replacement."""
        assert self.windows is not None
        n, k = self.windows.shape[0], self.config.loc_text_rows
        rng = random.Random(f"{self.config.seed}/text/{step}")
        picks = rng.sample(range(n), k) if k <= n else [rng.randrange(n) for _ in range(k)]
        return self.windows[picks].to(self.device)

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
                with autocast(self.device, self.precision):
                    cached = capture_outputs(self.model, [path], path, **kwargs)[path]
                stack.enter_context(replay_lower_blocks(self.model, self.spec, first - 1, cached))

            def inner_loss(logits: Tensor) -> Tensor:
                return per_row_nll(logits, batch, rows.edit_rows).sum()

            with autocast(self.device, self.precision):
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
            with autocast(self.device, self.precision), low_rank_edits(self.model, self.sites, packed, rows.owner):
                edited_logits = self.model(**kwargs).logits
            stack.close()  # the text windows replay their own lower blocks
            edit_rows = torch.cat([rows.edit_rows, rows.paraphrase_rows])
            edit_nll = per_row_nll(edited_logits, batch, edit_rows)
            loc = locality_kl(base_logits, edited_logits, batch, rows.loc_rows, cfg.loc_divergence)
            lift = target_lift(base_logits, edited_logits, batch, rows.loc_rows, rows.loc_edit_rows)
            text = torch.zeros((), device=self.device)
            if self.windows is not None:
                ids = self.text_rows_for(self.step)
                owner = torch.arange(ids.shape[0], device=self.device) % rows.groups
                text = text_locality_kl(*text_pass(self.model, self.spec, self.sites, packed, owner, ids, self.precision), cfg.loc_divergence)
            share = cfg.loc_text_share
            loss = cfg.edit_weight * edit_nll.mean() + cfg.loc_weight * ((1 - share) * loc + share * text) + cfg.target_lift_weight * lift
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
            "text_kl": float(text.detach()),
            "target_lift": float(lift.detach()),
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
            start = time.perf_counter()
            metrics = self.train_step()
            self.wall_s += time.perf_counter() - start
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
            "loc_text": self.text_meta,
            "torch_threads": torch.get_num_threads(),
            "wall_s": round(self.wall_s, 3),
            "precision": {"autocast": self.precision or "float32", "hardware": precision_record(self.device)},
        }

    def save(self, out: str | Path) -> None:
        save_checkpoint(out, self.network, self.optimizer, self.meta(), self.held_out)
        logger.info("%s: MEND checkpoint at step %d", out, self.step)

    def restore(self, checkpoint: MENDCheckpoint) -> None:
        """Continue from ``checkpoint`` (same model, data split and config up to :data:`RESUMABLE_CHANGES`)."""
        checkpoint.check_model(self.fingerprint)
        saved = saved_config(checkpoint.meta)
        differs = changed_settings(checkpoint.meta, self.config)
        if differs:
            raise ConfigError(
                f"{checkpoint.folder}: cannot resume with a different config ({', '.join(f'{k}: saved {saved.get(k)!r}, now {to_dict(self.config)[k]!r}' for k in differs)})"
            )
        saved_text = (checkpoint.meta.get("loc_text") or {}).get("fingerprint")
        if saved_text != (self.text_meta or {}).get("fingerprint"):
            raise ConfigError(f"{checkpoint.folder}: the locality text differs from the checkpoint's (corpus fingerprint "
                              f"saved {saved_text}, now {(self.text_meta or {}).get('fingerprint')}); resume with the same loc_corpus")
        held = checkpoint.meta["data"]["held_out_ids"]
        if held != [r.id for r in self.held_out] or checkpoint.meta["data"]["train"] != len(self.train_requests):
            raise ConfigError(f"{checkpoint.folder}: the data split differs from the checkpoint's; resume with the same --data")
        if checkpoint.optimizer is None:
            raise ConfigError(f"{checkpoint.folder}: no optimizer state to resume from")
        self.network.load_state_dict(checkpoint.network)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.step = checkpoint.step
        self.history = list(checkpoint.meta.get("history", []))
        self.wall_s = float(checkpoint.meta.get("wall_s", 0.0))
        threads = checkpoint.meta.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            logger.warning("%s: saved with %d torch threads, resuming with %d: not bit-identical to an uninterrupted run",
                           checkpoint.folder, threads, torch.get_num_threads())

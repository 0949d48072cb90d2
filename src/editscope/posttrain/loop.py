"""The post-training loop: AdamW with warm-up and decay, norms of every matrix every ``every`` steps.

A record ``{"step", "tokens", "wall_s", "metrics"}`` is appended to ``metrics.jsonl`` at step 0 (the
unedited model) and every ``every`` steps (and at the last); ``state/`` is saved after it, so a
killed run resumes from its last record and continues bit for bit (same data order, AdamW moments,
schedule and RNG). Metric keys: ``weight/<param>/fro`` and ``weight/<param>/delta_fro`` for every
matrix (``posttrain.norms``), ``train/loss`` (mean token NLL over the steps since the previous
record), ``train/lr``, ``train/grad_norm`` (mean, before clipping) and ``ppl/<corpus>``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from editscope.instruments.downstream import Perplexity, PerplexityConfig
from editscope.models.loading import LoadedModel, load, resolve_device
from editscope.models.spec import ModelSpec
from editscope.posttrain.config import PosttrainConfig
from editscope.posttrain.data import IGNORE, Example, batch_for_step, build_examples, collate
from editscope.posttrain.norms import base_model, matrix_norms, snapshot
from editscope.posttrain.state import TrainState, load_train_state, rng_state, save_train_state, set_rng_state
from editscope.precision import autocast, precision_record, resolve
from editscope.runs.store import RunStore
from editscope.storage import atomic_directory

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"


# -- model set-up ----------------------------------------------------------------------------
def lora_target_modules(model: nn.Module, spec: ModelSpec) -> list[str]:
    """Module-name suffixes of every linear map inside the decoder blocks (attention and MLP)."""
    from transformers.pytorch_utils import Conv1D

    prefix = spec.layers + "."
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, (nn.Linear, Conv1D))
    }
    return sorted(names)


def trainable_model(loaded: LoadedModel, config: PosttrainConfig) -> nn.Module:
    """``full``/``cpt``: every parameter trains; ``lora``: a peft model whose adapters alone train."""
    model = loaded.model
    if config.mode != "lora":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    targets = list(lora.target_modules) or lora_target_modules(model, loaded.spec)
    torch.manual_seed(config.seed)  # LoRA's A initialization
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        fan_in_fan_out=loaded.spec.transposed,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def make_optimizer(params: dict[str, nn.Parameter], config: PosttrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms' gains or biases), as HF ``Trainer`` does."""
    decay = [p for p in params.values() if p.ndim >= 2]
    rest = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)


def make_scheduler(optimizer: torch.optim.Optimizer, config: PosttrainConfig) -> Any:
    warmup = round(config.warmup * config.steps)
    return get_scheduler(config.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=config.steps)


def decay_alone(config: PosttrainConfig) -> list[float] | None:
    """Per step k = 0..steps, the relative norm change AdamW's decoupled weight decay makes by itself to a
    decayed matrix: Π_{t<k} (1 − η_t λ) − 1, with η_t the scheduled learning rate of step t and λ the weight
    decay (AdamW scales every decayed weight by 1 − η_t λ before its Adam step; Loshchilov & Hutter 2019,
    Algorithm 2). The rest of a matrix's norm change is the gradient updates'. ``None`` for LoRA with weight
    decay: it decays the adapter factors, not the merged matrices whose norms are recorded.
    """
    if not config.weight_decay:
        return [0.0] * (config.steps + 1)
    if config.mode == "lora":
        return None
    lr = float(config.lr)  # type: ignore[arg-type]  # resolved: the mode's default fills None
    scheduler = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr), config)
    changes, factor = [0.0], 1.0
    for step in range(config.steps):
        factor *= 1.0 - lr * scheduler.lr_lambdas[0](step) * config.weight_decay
        changes.append(factor - 1.0)
    return changes


# -- one step ----------------------------------------------------------------------------------
@dataclass
class Interval:
    """Sums over the steps since the last record (a state is saved right after a record: it starts empty).

    The loss and gradient-norm sums stay on the model's device (float64) until :meth:`metrics`, so a
    training step never waits for the device to report a number.
    """

    loss_sum: float | torch.Tensor = 0.0
    loss_tokens: int = 0
    grad_norm_sum: float | torch.Tensor = 0.0
    steps: int = 0

    def metrics(self) -> dict[str, float]:
        if not self.steps:
            return {}
        return {"train/loss": float(self.loss_sum) / max(self.loss_tokens, 1), "train/grad_norm": float(self.grad_norm_sum) / self.steps}


def loss_tokens(batch: list[Example]) -> int:
    """Tokens the causal-LM loss counts: labels other than -100 after the first position."""
    return sum(sum(label != IGNORE for label in example.labels[1:]) for example in batch)


def train_step(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[Example],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: PosttrainConfig,
    device: torch.device,
    interval: Interval,
    precision: str | None = None,
) -> int:
    """One AdamW step on ``batch`` with the forward pass under ``precision`` (a resolved autocast dtype name
    or ``None``); returns the number of tokens with loss."""
    inputs = collate(tokenizer, batch, device)
    n_tokens = loss_tokens(batch)
    with autocast(device, precision):
        loss = model(**inputs, use_cache=False).loss
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip = config.grad_clip if config.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    interval.loss_sum = interval.loss_sum + loss.detach().double() * n_tokens
    interval.loss_tokens += n_tokens
    interval.grad_norm_sum = interval.grad_norm_sum + grad_norm.detach().double()
    interval.steps += 1
    return n_tokens


# -- the run ---------------------------------------------------------------------------------
class PosttrainRun:
    """One post-training run into ``config.out`` (see the module docstring)."""

    def __init__(self, config: PosttrainConfig, *, resume: bool = False, overwrite: bool = False) -> None:
        self.config = config.resolved()
        self.resume = resume
        self.overwrite = overwrite
        self.store = RunStore(self.config.out, PosttrainConfig, position="step")

    def execute(self, on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        c = self.config
        self.store.check_writable()
        self.store.check_claim(c, resume=self.resume, overwrite=self.overwrite)
        device = resolve_device(c.device)
        precision = resolve(c.autocast, device, "posttrain.autocast")
        loaded = load(c.model)
        tokenizer = loaded.tokenizer
        examples = build_examples(tokenizer, c.mode, c.data, c.answer, c.steps * c.batch_size, c.seq_len)
        loaded.model.to(device)
        reference = snapshot(loaded.model)
        model = trainable_model(loaded, c)
        params = trainable_parameters(model)
        optimizer = make_optimizer(params, c)
        scheduler = make_scheduler(optimizer, c)
        # everything that can refuse the run has run: only now is the folder claimed
        self.store.begin(c, resume=self.resume, overwrite=self.overwrite, resolved={"precision": precision_record(device)})
        ppl = Perplexity(PerplexityConfig(source=c.eval_source, n_windows=c.eval_windows, autocast=c.autocast))
        ppl.baseline(model, tokenizer)

        saved = load_train_state(self.store.path)
        step, tokens, wall, interval = 0, 0, 0.0, Interval()
        if saved is not None:
            step, tokens, wall, interval = self._restore(saved, params, optimizer, scheduler)
            logger.info("%s: resuming at step %d of %d", self.store.path, step, c.steps)
        else:
            self.store.truncate_metrics(-1)
            torch.manual_seed(c.seed)
            self._record(model, tokenizer, reference, ppl, scheduler, step=0, tokens=0, wall=0.0, interval=interval, on_record=on_record)

        model.train()
        bar = tqdm(total=c.steps, initial=step, desc=f"posttrain {c.mode}", unit="step", dynamic_ncols=True)
        with bar:
            while step < c.steps:
                start = time.perf_counter()
                batch = batch_for_step(examples, step, c.batch_size, c.seed)
                tokens += train_step(model, tokenizer, batch, optimizer, scheduler, c, device, interval, precision)
                step += 1
                wall += time.perf_counter() - start
                bar.update(1)
                if step % c.every == 0 or step == c.steps:
                    model.eval()
                    self._record(model, tokenizer, reference, ppl, scheduler, step, tokens, wall, interval, on_record)
                    interval = Interval()
                    self._save(step, tokens, wall, params, optimizer, scheduler)
                    model.train()
        model.eval()
        if c.save_model and not (self.store.path / MODEL_DIR / "config.json").is_file():
            self._save_model(model, tokenizer)
        return self.store.read_metrics()

    # -- records and state -------------------------------------------------------------------
    def _record(self, model, tokenizer, reference, ppl, scheduler, step, tokens, wall, interval, on_record) -> None:
        start = time.perf_counter()
        metrics = matrix_norms(model, reference)
        metrics.update(ppl.measure(model, tokenizer))
        metrics.update(interval.metrics())
        metrics["train/lr"] = float(scheduler.get_last_lr()[0])
        record = {"step": step, "tokens": tokens, "wall_s": round(wall, 3), "metrics": metrics}
        self.store.append_metrics(record)
        logger.info("step %d: recorded in %.1f s (loss %s)", step, time.perf_counter() - start, metrics.get("train/loss"))
        if on_record is not None:
            on_record(record)

    def _save(self, step, tokens, wall, params, optimizer, scheduler) -> None:
        progress = {"step": step, "tokens": tokens, "wall_s": wall}
        state = TrainState(
            progress=progress,
            params={name: p.detach() for name, p in params.items()},
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            rng=rng_state(),
        )
        save_train_state(self.store.path, state)

    def _restore(self, saved: TrainState, params, optimizer, scheduler) -> tuple[int, int, float, Interval]:
        if set(saved.params) != set(params):
            raise ValueError(f"{self.store.path}/state: its parameters do not match this run's trainable parameters")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved.params[name].to(param.device))
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        set_rng_state(saved.rng)
        self.store.truncate_metrics(saved.step)
        p = saved.progress
        return saved.step, int(p["tokens"]), float(p["wall_s"]), Interval()

    def _save_model(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """The final weights as an HF folder (LoRA: the adapter, then the merged model)."""
        if self.config.mode == "lora":
            with atomic_directory(self.store.path / ADAPTER_DIR) as tmp:
                model.save_pretrained(str(tmp))
            model = model.merge_and_unload()
        with atomic_directory(self.store.path / MODEL_DIR) as tmp:
            base_model(model).save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        logger.info("final weights written to %s", self.store.path / MODEL_DIR)


def run_posttrain(config: PosttrainConfig, *, resume: bool = False, overwrite: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) ``config``; returns the run's metric records."""
    return PosttrainRun(config, resume=resume, overwrite=overwrite).execute()


def final_model_folder(run_folder: str | Path) -> Path:
    return Path(run_folder) / MODEL_DIR

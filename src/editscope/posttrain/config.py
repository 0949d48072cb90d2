"""The post-training run's configuration: one frozen dataclass, saved as the run folder's ``config.yaml``.

Three modes, each with the settings usual for its kind filled in when the user leaves them out
(:data:`MODE_DEFAULTS`):

* ``cpt`` -- continued pre-training: next-token loss on every token of fixed-length windows of a
  text corpus; AdamW with betas (0.9, 0.95), weight decay 0.1, peak learning rate 1e-4, linear
  warm-up over 5% of the steps and cosine decay (the Llama/SmolLM pre-training recipe at the small
  learning rate of continued pre-training).
* ``full`` -- full fine-tuning on question-answer or instruction pairs: loss on the answer tokens
  only; AdamW betas (0.9, 0.999), peak learning rate 2e-5, weight decay 0, 3% warm-up, cosine decay
  (the HF ``Trainer``/Alpaca SFT defaults).
* ``lora`` -- LoRA (peft) on the same pairs: rank 16, alpha 32, dropout 0.05 on every linear map of
  the attention and MLP blocks; peak learning rate 2e-4, weight decay 0, 3% warm-up, cosine decay
  (the QLoRA paper's and peft examples' settings).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from editscope.config import ConfigError, from_dict, load_yaml, to_dict
from editscope.precision import normalize

Mode = Literal["cpt", "full", "lora"]

MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpt": {"lr": 1e-4, "weight_decay": 0.1, "betas": (0.9, 0.95), "warmup": 0.05, "data": "bundled:c4"},
    "full": {"lr": 2e-5, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup": 0.03, "data": "demo"},
    "lora": {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup": 0.03, "data": "demo"},
}


@dataclass(frozen=True)
class LoraSettings:
    """peft ``LoraConfig`` fields used by ``--mode lora``.

    Attributes:
        rank: r, the inner dimension of B A (count). QLoRA/peft examples: 16.
        alpha: scaling numerator; the update is (alpha / rank) B A. Common choice: 2 x rank.
        dropout: dropout on the LoRA branch's input (probability).
        target_modules: module-name suffixes that get an adapter; ``()`` = every linear map of the
            attention and MLP blocks of the model's spec.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class PosttrainConfig:
    """One post-training run.

    Attributes:
        mode: ``cpt`` (continued pre-training on text), ``full`` (full fine-tuning on pairs) or
            ``lora`` (LoRA fine-tuning on pairs).
        model: bundled model name, HF folder or hub id.
        data: ``cpt``: a corpus (``bundled:c4``, ``bundled:wiki``, a text/WikiExtractor file or
            folder); ``full``/``lora``: ``demo``, an edit dataset (CounterFact, zsRE, ...) or an
            instruction file (JSON/JSONL with ``instruction``/``input``/``output`` or
            ``prompt``/``response``). ``None`` = the mode's default.
        answer: for edit datasets, which object the pairs teach: ``true`` (the real fact, plain
            question-answer fine-tuning) or ``new`` (the counterfactual, knowledge injection).
        steps: optimizer steps (count).
        batch_size: sequences per step.
        seq_len: tokens per sequence (``cpt`` windows; pairs are cut to it).
        lr: peak learning rate; ``None`` = the mode's default.
        weight_decay: AdamW's decoupled weight decay (dimensionless); ``None`` = the mode's default.
        betas: AdamW's (beta1, beta2); ``None`` = the mode's default.
        warmup: linear warm-up, as a fraction of ``steps``; ``None`` = the mode's default.
        schedule: learning-rate decay after warm-up (``transformers.get_scheduler`` name).
        grad_clip: global gradient-norm clip (``0`` = none).
        every: record metrics and save the state every this many steps (and at the last step).
        eval_windows: held-out perplexity windows (the ``perplexity`` instrument's, 256 tokens each).
        eval_source: held-out text for perplexity (``default`` = the bundled Wikipedia sample, read
            from its end).
        seed: data order, LoRA initialization and dropout.
        lora: LoRA settings (``mode: lora`` only).
        save_model: write the final weights (merged, for LoRA) to ``<out>/model`` as an HF folder.
        device: ``auto`` (CUDA where there is one, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
            Where the run computes, not what: not part of the config's digest.
        autocast: precision of the forward passes (:mod:`editscope.precision`; weights and AdamW
            stay fp32): ``auto`` (bf16 where the device runs it natively, the weights' dtype
            elsewhere), a dtype name (``bf16``), or ``None`` for the weights' dtype. The run folder's
            ``config.yaml`` records what it resolved to.
        out: the run folder.
    """

    mode: Mode = "full"
    model: str = "smollm2-135m"
    data: str | None = None
    answer: Literal["true", "new"] = "true"
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 256
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    warmup: float | None = None
    schedule: str = "cosine"
    grad_clip: float = 1.0
    every: int = 50
    eval_windows: int = 8
    eval_source: str = "default"
    seed: int = 0
    lora: LoraSettings = LoraSettings()
    save_model: bool = True
    device: str = "auto"
    autocast: str | None = "auto"
    out: str = "runs/posttrain"

    placement_fields: ClassVar[tuple[str, ...]] = ("out", "device")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "every", "eval_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"posttrain.{name}: must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 8:
            raise ConfigError(f"posttrain.seq_len: must be >= 8, got {self.seq_len}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"posttrain.lr: must be > 0, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"posttrain.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise ConfigError(f"posttrain.warmup: a fraction of the steps in [0, 1), got {self.warmup}")
        if self.grad_clip < 0:
            raise ConfigError(f"posttrain.grad_clip: must be >= 0, got {self.grad_clip}")
        try:
            normalize(self.autocast, "posttrain.autocast")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.lora.rank < 1 or not self.lora.alpha > 0 or not 0 <= self.lora.dropout < 1:
            raise ConfigError("posttrain.lora: rank >= 1, alpha > 0 and dropout in [0, 1) are needed")

    def resolved(self) -> PosttrainConfig:
        """This config with the mode's usual settings in place of every ``None``."""
        defaults = MODE_DEFAULTS[self.mode]
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **filled)

    def digest(self) -> str:
        """Hash of everything that decides the run's results (not where it is written)."""
        data = {k: v for k, v in to_dict(self.resolved()).items() if k not in self.placement_fields}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_posttrain_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> PosttrainConfig:
    """The config file's values (if any) with ``overrides`` (e.g. command-line flags) on top, resolved."""
    data = load_yaml(path) if path is not None else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = from_dict(PosttrainConfig, data, where=str(path) if path else "posttrain").resolved()
    from transformers import SchedulerType

    names = [s.value for s in SchedulerType]
    if config.schedule not in names:
        raise ConfigError(f"posttrain.schedule: {config.schedule!r} is not one of {', '.join(names)}")
    return config

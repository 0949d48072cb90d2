"""Fine-tuning editors: ``ft`` (plain) and ``ft-l`` (with an L-infinity norm constraint).

Both train the MLP output projections of ``config.layers`` directly on the negative log-likelihood
of each request's ``target_new`` after its prompt, all requests of a batch together, with Adam.
``ft-l`` is the constrained fine-tuning baseline of Zhu et al. (2020), "Modifying Memories in
Transformer Models", as run by Meng et al. (2022, ROME, "FT+L"): after every optimizer step each
edited weight is clamped element-wise to within ``±norm_constraint`` of its original value.

The editors train the real parameters, read ``delta = final - original`` and copy the saved
originals back, so the model is bit-identical afterwards (the Editor contract).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.editors.base import Editor, EditorConfig, register_editor, trainable
from editscope.tokens import TargetBatch, target_batch
from editscope.types import EditRequest, WeightDelta, preserved

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FTConfig(EditorConfig):
    """Hyperparameters of plain fine-tuning (``ft``).

    Attributes:
        layers: decoder blocks whose MLP output projection is trained (the ``mlp_out`` weight of
            the model's spec). EasyEdit's FT default for Llama models: ``[4, 5, 6, 7, 8]``.
        steps: number of Adam steps (count). ROME's FT/FT-L: 25.
        lr: Adam learning rate (per step, in weight units). ROME's FT/FT-L on GPT-2 XL: 5e-4.
        weight_decay: Adam's L2 weight decay coefficient (dimensionless). ROME: 0.
        stop_loss: stop early once the mean per-token target NLL (nats) falls below this; ``None``
            never stops early. ROME's ``ft_main`` stops at 1e-2.
        norm_constraint: if set, after every step clamp each edited weight element-wise to within
            ``±norm_constraint`` (weight units, L-infinity) of its original value; ``None`` leaves it
            unconstrained. ROME's FT-L on GPT-2 XL: 5e-4.
    """

    steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    stop_loss: float | None = 1e-2
    norm_constraint: float | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError(f"{type(self).__name__}.layers: at least one layer is needed")
        if self.steps < 1:
            raise ConfigError(f"{type(self).__name__}.steps: must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"{type(self).__name__}.lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"{type(self).__name__}.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.norm_constraint is not None and not self.norm_constraint > 0:
            raise ConfigError(
                f"{type(self).__name__}.norm_constraint: must be > 0 or null (unconstrained), "
                f"got {self.norm_constraint}"
            )


@dataclass(frozen=True)
class FTLConfig(FTConfig):
    """Hyperparameters of norm-constrained fine-tuning (``ft-l``); the fields of :class:`FTConfig`.

    ``norm_constraint`` is required here (default 5e-4, ROME's FT-L value for GPT-2 XL) and ROME's
    FT-L trains a single layer.
    """

    layers: tuple[int, ...] = (6,)
    norm_constraint: float | None = 5e-4

    def __post_init__(self) -> None:
        if self.norm_constraint is None:
            raise ConfigError(_FTL_NEEDS_BOUND)
        super().__post_init__()


_FTL_NEEDS_BOUND = (
    "ft-l needs norm_constraint (the L-infinity bound on each weight's change, e.g. 5e-4 as in ROME's FT-L); "
    "use the 'ft' editor for unconstrained fine-tuning"
)


def target_nll(model: PreTrainedModel, batch: TargetBatch) -> Tensor:
    """Mean over requests of each request's mean per-token target NLL (nats), a scalar.

    The per-request mean (not the sum over all tokens) weights every request equally, as ROME's
    ``ft_main`` does. Only the target positions go through the unembedding (``logits_to_keep``).
    """
    logits = model(**batch.forward_kwargs()).logits  # [batch, keep, vocab]
    token_lp = batch.target_logprobs(logits)  # [batch, keep], 0 where masked
    per_request = -token_lp.sum(dim=1) / batch.target_mask.sum(dim=1)
    return per_request.mean()


def request_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
) -> TargetBatch:
    """The prompt+``target_new`` batch of ``requests`` on the model's input device."""
    device = model.get_input_embeddings().weight.device
    return target_batch(tokenizer, [r.text for r in requests], [r.target_new for r in requests], device)


def minimize_target_nll(
    model: PreTrainedModel,
    batch: TargetBatch,
    optimizer: torch.optim.Optimizer,
    steps: int,
    stop_loss: float | None,
    name: str,
    after_step: Callable[[], None] | None = None,
) -> float:
    """Run ``optimizer`` on the batch's mean target NLL for up to ``steps`` steps; return the last NLL.

    Stops early once the NLL is below ``stop_loss``; ``after_step`` runs after every update (e.g. a clamp).
    """
    loss_value = float("nan")
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = target_nll(model, batch)
        loss_value = loss.item()
        log.debug("%s step %d/%d: target NLL %.4f", name, step + 1, steps, loss_value)
        if stop_loss is not None and loss_value < stop_loss:
            log.debug("%s: target NLL below stop_loss %.3g, stopping", name, stop_loss)
            break
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
    return loss_value


@register_editor("ft")
class FTEditor(Editor):
    """Fine-tune the MLP output projections of ``config.layers`` on the target NLL (optionally L-inf constrained)."""

    config_class = FTConfig
    config: FTConfig

    def compute_delta(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
    ) -> WeightDelta:
        self.check_requests(requests)
        cfg = self.config
        names = self.edited_parameters(model)
        batch = request_batch(model, tokenizer, requests)
        with torch.enable_grad(), trainable(model, names) as params, preserved(model, names) as originals:
            optimizer = torch.optim.Adam(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
            bound = cfg.norm_constraint
            after_step = (lambda: self._clamp(params, originals, bound)) if bound is not None else None
            minimize_target_nll(model, batch, optimizer, cfg.steps, cfg.stop_loss, self.name, after_step)
            optimizer.zero_grad(set_to_none=True)
            deltas = {name: (p.detach() - originals[name]) for name, p in params.items()}
        return WeightDelta(deltas)

    @staticmethod
    @torch.no_grad()
    def _clamp(params: dict[str, torch.nn.Parameter], originals: dict[str, Tensor], bound: float) -> None:
        """Clamp each parameter element-wise into ``[original - bound, original + bound]`` (Zhu et al. 2020)."""
        for name, p in params.items():
            p.copy_(torch.clamp(p, min=originals[name] - bound, max=originals[name] + bound))


@register_editor("ft-l")
class FTLEditor(FTEditor):
    """``ft`` with a required L-infinity bound on each weight's change (ROME's FT-L baseline)."""

    config_class = FTLConfig
    config: FTLConfig

    def __init__(self, config: FTConfig | None = None) -> None:
        if isinstance(config, FTConfig) and not isinstance(config, FTLConfig) and config.norm_constraint is None:
            raise ConfigError(_FTL_NEEDS_BOUND)
        super().__init__(config)

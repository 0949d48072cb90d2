"""The locate-and-edit core shared by MEMIT, EMMET, AlphaEdit and ENCORE (MEMIT's Algorithm 1).

1. z* for every request at the residual stream after the last edited block (batched, see linalg.values);
2. for each edited layer l, lowest first: keys K_l (averaged over context prefixes), residual
   R_l = (z* - current value) / (layers left), an update dW_l from the method's equation, applied
   temporarily so the next layer sees it; where the block norms the MLP output before adding it
   (Gemma), R_l is first mapped to the pre-norm output (:mod:`editscope.linalg.postnorm`);
3. the model is restored exactly and the accumulated updates returned as one WeightDelta.

A subclass implements :meth:`LocateEditor.layer_update` (one paper equation); statistics, keys
and values come from here.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.data.corpora import load_corpus
from editscope.editors.anchors import anchor_norm, mlp_values
from editscope.editors.base import Editor, EditorConfig
from editscope.linalg.keys import bare_prompt_outputs, compute_keys
from editscope.linalg.postnorm import prenorm_residual, rms_gain
from editscope.linalg.restraints import anchor_values, prune_update, rect_mask
from editscope.linalg.stats import second_moments
from editscope.linalg.templates import MEMIT_SEEDS, context_templates
from editscope.linalg.values import ZConfig, compute_z
from editscope.models.fingerprint import model_fingerprint
from editscope.models.spec import ModelSpec
from editscope.types import EditRequest, WeightDelta, preserved

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocateConfig(EditorConfig):
    """Fields shared by locate-and-edit editors.

    Attributes:
        z: the z* optimization (see :class:`~editscope.linalg.values.ZConfig`).
        context_lengths: ``(length, count)`` pairs of the texts sampled for the context templates,
            length in tokens counting the seed text's (MEMIT's ``[(10, 5)]``; ROME's ``[[5, 10], [10, 10]]``;
            see :mod:`editscope.linalg.templates`); empty: the bare prompt alone.
        context_seeds: seed texts the sampled texts start from, ``count // len(seeds)`` each (MEMIT's
            "The", "Therefore", "Because", "I", "You"); empty: the start-of-text token (ROME).
        key_average: how keys are averaged over the templates (:data:`~editscope.linalg.keys.KEY_AVERAGES`):
            ``groups``, half on the bare prompt (MEMIT's ``compute_ks``), or ``uniform`` (ROME's ``compute_u``).
        seed: seed for sampling the context texts (the reference draws new ones every run).
        stats_corpus: text for C0 = E[k k^T] (``default``: the bundled Wikipedia sample; see data.corpora).
        stats_samples: documents used for C0 (MEMIT: 100,000 Wikipedia texts).
        stats_seq_len: tokens per sample for C0 (documents are cut into windows of this length).
        rect_keep: RECT: keep this fraction of each layer update's entries, those with the largest
            relative change |dW / W|, and zero the rest (0.4 in RECT's paper and AlphaEdit's
            ``memit_rect_main.py``); ``None``: off. See :mod:`editscope.linalg.restraints`.
        prune: PRUNE: the model holds the accumulated update with its singular values above the
            unedited matrix's largest one shrunk logarithmically (the reference applies it once after
            the last edit; here after every batch, to the whole accumulation, so every checkpoint
            shows the model PRUNE would leave after that many edits); later edits are computed on the
            unrestrained accumulation, as in the reference.
        prune_base: the logarithm's base in PRUNE's restraint (e, the reference default; 1.2, 1.5, 2 are its other options).
        norm_anchor: norm anchors: each edit's MLP value at the last edited layer, v0 + (z* - h), is
            rescaled to a reference norm from the unedited model, and an edit beyond twice it is
            skipped (:func:`~editscope.linalg.restraints.anchor_values`).
        anchor_samples: requests whose unedited-model values set the reference norm (the mean after
            dropping the top 5%; ``nas_restart``: 1000 in SasyaTitech/NAS). Cached on disk per model and settings.
        anchor_data: where those requests come from (NAS: random MultiCounterFact requests; here a
            seeded draw from this dataset, by default the bundled demo set).
        stats_autocast: precision of the statistics' forward pass (``"auto"``: bf16 where the device
            runs it natively; a dtype name; ``None``: the model's own); the products and sums stay
            float32/float64. The statistics cache is keyed by what it resolved to.
    """

    z: ZConfig = field(default_factory=ZConfig)
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    context_seeds: tuple[str, ...] = MEMIT_SEEDS
    key_average: Literal["groups", "uniform"] = "groups"
    seed: int = 0
    stats_corpus: str = "default"
    stats_samples: int = 1000
    stats_seq_len: int = 256
    stats_autocast: str | None = "auto"
    rect_keep: float | None = None
    prune: bool = False
    prune_base: float = math.e
    norm_anchor: bool = False
    anchor_samples: int = 1000
    anchor_data: str = "demo"

    def __post_init__(self) -> None:
        if self.rect_keep is not None and not 0.0 < self.rect_keep <= 1.0:
            raise ConfigError(f"rect_keep: must be in (0, 1] or null, got {self.rect_keep}")
        if self.prune_base <= 1.0:
            raise ConfigError(f"prune_base: must be > 1, got {self.prune_base}")

    @classmethod
    def derived(cls, n_layers: int, d_mlp: int) -> dict[str, Any]:
        """Five consecutive MLPs from block ``n_layers / 8``, rounded (:mod:`editscope.editors.published`)."""
        return {"layers": list(band(n_layers))}


def band(n_layers: int, width: int = 5) -> range:
    """The MEMIT family's edited blocks on a model of ``n_layers``: ``width`` from ``n_layers / 8``
    rounded half up (Llama-3-8B's published 4-8 of 32; SmolLM2's measured 4-8 of 30; GPT-J's published
    band, 3-8 of 28, starts one lower), cut at the last block."""
    start = (n_layers + 4) // 8
    return range(start, min(start + width, n_layers))


def scaled_lambda(published: float, d_mlp: int, at_width: int = 16384) -> float:
    """A C0 weight ``published`` for an MLP ``at_width`` wide (GPT-J's 16,384), scaled to ``d_mlp``."""
    return round(published * d_mlp / at_width, 1)


class LocateEditor(Editor):
    """Base of the MEMIT family; subclasses implement :meth:`layer_update`."""

    config_class = LocateConfig
    config: LocateConfig
    needs_c0 = True  # whether layer_update reads C0 (all methods here do)

    def __init__(self, config: LocateConfig | None = None) -> None:
        super().__init__(config)
        self.last_info: dict[str, float] = {}
        self._templates: tuple[str, ...] | None = None
        self._base_fingerprint: str | None = None
        self._c0: dict[int, Tensor] = {}
        self._pending: dict[int, Tensor] = {}
        self._beta: dict[int, float] = {}  # PRUNE: the unedited matrices' largest singular values
        self._raw: dict[int, Tensor] = {}  # PRUNE: the accumulated, unrestrained update per layer (out, in)
        self._pending_raw: dict[int, Tensor] = {}
        self._anchor: float | None = None  # norm anchors: the reference value norm

    # -- the method's equation -----------------------------------------------------------
    @abstractmethod
    def layer_update(self, layer: int, r: Tensor, k: Tensor) -> Tensor:
        """dW for ``layer`` in (out, in) orientation from residuals ``r`` [d_out, n] and keys ``k`` [d_in, n]."""

    # -- shared machinery ----------------------------------------------------------------
    def prepare(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> ModelSpec:
        """Resolve the spec, context templates and C0 (once; they belong to the unedited model)."""
        spec = self.spec(model)
        for layer in self.config.layers:
            spec.check_layer(model, layer)
        if self._base_fingerprint is None:
            self._base_fingerprint = model_fingerprint(model)
        if self.config.prune and not self._beta:
            for layer in self.config.layers:
                weight = spec.as_out_in(model.get_parameter(spec.weight_name(layer)).detach()).double()
                self._beta[layer] = float(torch.linalg.matrix_norm(weight, ord=2))
        if self._templates is None:
            c = self.config
            self._templates = context_templates(model, tokenizer, c.context_lengths, c.context_seeds, c.seed)
        if self.needs_c0 and set(self._c0) != set(self.config.layers):
            corpus = load_corpus(self.config.stats_corpus, model=model, tokenizer=tokenizer, seed=self.config.seed)
            self._c0 = second_moments(
                model, tokenizer, spec, self.config.layers, corpus,
                n_samples=self.config.stats_samples, seq_len=self.config.stats_seq_len, fingerprint=self._base_fingerprint,
                autocast=self.config.stats_autocast,
            )
            self.on_statistics()
        if self.config.norm_anchor and self._anchor is None:
            self._anchor = anchor_norm(self, model, tokenizer, spec)
        return spec

    def on_statistics(self) -> None:
        """Hook after C0 is known (e.g. factorize it once)."""

    def compute_delta(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
    ) -> WeightDelta:
        self.check_requests(requests)
        spec = self.prepare(model, tokenizer)
        layers = sorted(self.config.layers)
        start = time.perf_counter()
        deltas: dict[int, Tensor] = {}
        self._pending = {}
        with preserved(model, [spec.weight_name(layer) for layer in layers]):
            if self.config.prune:
                self._unrestrain(model, spec)
            zres = compute_z(model, tokenizer, spec, layers[-1], requests, self._templates, self.config.z, site="residual")
            z_s = time.perf_counter() - start
            targets = zres.z
            if self.config.norm_anchor:
                assert self._anchor is not None
                v0 = mlp_values(model, tokenizer, spec, layers[-1], requests)
                targets, skipped = anchor_values(zres.z, zres.h, v0.to(zres.z.device), self._anchor)
                self.last_skipped = int(skipped.sum())
            for i, layer in enumerate(layers):
                keys = compute_keys(model, tokenizer, spec, [layer], requests, self._templates, average=self.config.key_average)[layer]
                # one pass for the residual at the last layer and, where the block norms its MLP output,
                # that output at this layer before and after the norm
                resid_path = spec.layer_path(layers[-1])
                around_norm = [spec.module_path(layer, part) for part in ("mlp_out", "mlp_out_norm")] if spec.mlp_out_norm else []
                values = bare_prompt_outputs(model, tokenizer, requests, [*around_norm, resid_path])
                current = values[resid_path]
                r = (targets.to(current.device) - current) / (len(layers) - i)
                if around_norm:
                    out_path, norm_path = around_norm
                    gain = rms_gain(model.get_submodule(norm_path), current.shape[0], current)
                    r = prenorm_residual(values[out_path], values[norm_path], r, gain)
                update = self.layer_update(layer, r.to(keys.device), keys)
                if not torch.isfinite(update).all():
                    raise FloatingPointError(f"{self.name}: non-finite update at layer {layer}")
                param = model.get_parameter(spec.weight_name(layer))
                if self.config.rect_keep is not None:
                    update = update * rect_mask(update, spec.as_out_in(param.detach()), self.config.rect_keep).to(update.device)
                stored = spec.to_stored(update).to(device=param.device, dtype=param.dtype)
                with torch.no_grad():
                    param.add_(stored)
                deltas[layer] = stored
                self._pending[layer] = keys.double()
        logger.debug("%s: %d requests, z* %.1f s (steps %s), total %.1f s", self.name, len(requests), z_s, zres.steps, time.perf_counter() - start)
        if self.config.prune:
            deltas = self._restrained(spec, deltas)
        self.last_info = {"z_seconds": z_s, "z_steps_mean": sum(zres.steps) / len(zres.steps), "seconds": time.perf_counter() - start}
        return WeightDelta({spec.weight_name(layer): d for layer, d in deltas.items()})

    # -- PRUNE -----------------------------------------------------------------------------
    def _pruned(self, layer: int, raw: Tensor) -> Tensor:
        return prune_update(raw, self._beta[layer], self.config.prune_base)

    def _unrestrain(self, model: PreTrainedModel, spec: ModelSpec) -> None:
        """Give the model the accumulated update unrestrained (W0 + raw instead of W0 + PRUNE(raw)), inside ``preserved``."""
        for layer, raw in self._raw.items():
            param = model.get_parameter(spec.weight_name(layer))
            with torch.no_grad():
                param.add_(spec.to_stored(raw - self._pruned(layer, raw)).to(device=param.device, dtype=param.dtype))

    def _restrained(self, spec: ModelSpec, deltas: dict[int, Tensor]) -> dict[int, Tensor]:
        """The deltas that take the model from W0 + PRUNE(raw) to W0 + PRUNE(raw + this batch's updates)."""
        out = {}
        for layer, stored in deltas.items():
            before = self._raw.get(layer, torch.zeros_like(spec.as_out_in(stored), dtype=torch.float64))
            after = before + spec.as_out_in(stored).double()
            change = self._pruned(layer, after) - (self._pruned(layer, before) if layer in self._raw else 0.0)
            out[layer] = spec.to_stored(change).to(device=stored.device, dtype=stored.dtype)
            self._pending_raw[layer] = after
        return out

    def commit(self, requests: Sequence[EditRequest], delta: WeightDelta) -> None:
        self._raw.update(self._pending_raw)
        self._pending_raw = {}

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"templates": list(self._templates or ()), "base_fingerprint": self._base_fingerprint}
        if self._raw:
            state.update({f"raw.{layer}": raw.float().cpu() for layer, raw in self._raw.items()})
            state["prune_beta"] = {str(layer): beta for layer, beta in self._beta.items()}
        if self._anchor is not None:
            state["anchor"] = self._anchor
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        templates = state.get("templates")
        self._templates = tuple(templates) if templates else None
        self._base_fingerprint = state.get("base_fingerprint")
        self._raw = {int(k.split(".", 1)[1]): v.double() for k, v in state.items() if k.startswith("raw.")}
        self._anchor = state.get("anchor", self._anchor)
        if "prune_beta" in state:
            self._beta = {int(k): float(v) for k, v in state["prune_beta"].items()}


class SequentialGramMixin:
    """Keeps Kp Kp^T per layer, the Gram matrix of every committed edit's keys (AlphaEdit, ENCORE).

    Put it before :class:`LocateEditor` in the bases; it extends ``commit`` and the state.
    """

    _pending: dict[int, Tensor]

    def __init__(self, config: LocateConfig | None = None) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        self._gram: dict[int, Tensor] = {}

    def prev_gram(self, layer: int, d_in: int, like: Tensor) -> Tensor:
        gram = self._gram.get(layer)
        return gram.to(like.device) if gram is not None else torch.zeros(d_in, d_in, dtype=torch.float64, device=like.device)

    def commit(self, requests: Sequence[EditRequest], delta: WeightDelta) -> None:
        for layer, keys in self._pending.items():
            self._gram[layer] = self.prev_gram(layer, keys.shape[0], keys) + keys @ keys.T
        self._pending = {}
        super().commit(requests, delta)  # type: ignore[misc]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **{f"gram.{layer}": g.cpu() for layer, g in self._gram.items()}}  # type: ignore[misc]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith("gram.")})  # type: ignore[misc]
        self._gram = {int(k.split(".", 1)[1]): v.clone() for k, v in state.items() if k.startswith("gram.")}

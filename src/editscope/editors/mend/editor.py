"""The ``mend`` editor: edits with a trained MEND hypernetwork (Mitchell et al. 2022).

For a batch of requests, one forward and backward pass on the model reads every edited matrix's
inputs ``u`` and output gradients ``δ`` for the NLL of ``target_new`` (each request's mean token
NLL, so one request's gradient does not depend on the others); the hypernetwork maps them to
``(ũ, δ̃)`` and the delta is ``ΔW = −α Σ_t δ̃_t ũ_tᵀ`` over all tokens of all requests -- the sum of
the requests' single edits, as MEND's batched edits. The model is not changed.

The hypernetwork belongs to one model: the first call (``prepare`` in a run, which sees the unedited
model) checks the model's fingerprint against the one recorded at training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.editors.base import Editor, EditorConfig, register_editor
from editscope.editors.ft import request_batch
from editscope.editors.mend.checkpoint import MENDCheckpointError, load_checkpoint
from editscope.editors.mend.factors import EditSite, edit_sites, gradient_factors, resolve_layers, tokens_of
from editscope.editors.mend.network import MENDNetwork
from editscope.editors.mend.training import per_row_nll
from editscope.models.fingerprint import model_fingerprint
from editscope.models.placement import input_device
from editscope.precision import autocast, normalize, resolve
from editscope.storage import cache_home
from editscope.types import EditRequest, WeightDelta


def default_checkpoint_folder(fingerprint: str) -> Path:
    """Where ``editscope mend train`` writes by default, and where the editor looks without ``checkpoint``."""
    return cache_home() / "mend" / fingerprint


@dataclass(frozen=True)
class MENDConfig(EditorConfig):
    """Hyperparameters of the ``mend`` editor (the method's own live in the trained checkpoint).

    Attributes:
        checkpoint: folder of a trained hypernetwork (``editscope mend train --out DIR``);
            ``None`` looks in the default place for the model (``$EDITSCOPE_HOME/mend/<fingerprint>``).
        layers: empty: the blocks the hypernetwork was trained for; otherwise they must be exactly
            those (negative indices count from the end), a check against using the wrong checkpoint.
        edit_scale: factor on every ΔW at edit time (1: as trained). Below 1 it trades efficacy for
            locality without retraining, as a smaller learned step size α would.
        autocast: precision of the gradient pass that reads ``u`` and ``δ`` (``"auto"``: bf16 where
            the device runs it natively; a dtype name; ``None``: the model's own; see
            :mod:`editscope.precision`). ``"trained"``: the precision the checkpoint was trained with.
            A network trained under bf16 sees float32 factors that differ by bf16 rounding only.
    """

    layers: tuple[int, ...] = ()
    checkpoint: str | None = None
    edit_scale: float = 1.0
    autocast: str | None = "auto"

    def __post_init__(self) -> None:
        if not self.edit_scale > 0:
            raise ConfigError(f"MENDConfig.edit_scale: must be > 0, got {self.edit_scale}")
        if self.autocast != "trained":
            try:
                normalize(self.autocast, "MENDConfig.autocast")
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if self.checkpoint is None:
            return
        if not self.checkpoint.strip():
            raise ConfigError("MENDConfig.checkpoint: empty path (leave it out for the default location)")
        if not Path(self.checkpoint).expanduser().exists():
            raise ConfigError(
                f"MENDConfig.checkpoint: no such folder {self.checkpoint!r}; train a hypernetwork there with "
                f"`editscope mend train --model <model> --out {self.checkpoint}`"
            )


@register_editor("mend")
class MENDEditor(Editor):
    """Edit with a trained MEND hypernetwork: ``ΔW = −α Σ δ̃ ũᵀ`` from one gradient pass."""

    config_class = MENDConfig
    config: MENDConfig

    def __init__(self, config: MENDConfig | None = None) -> None:
        super().__init__(config)
        self._network: MENDNetwork | None = None
        self._sites: list[EditSite] | None = None
        self._autocast: str | None = None

    # -- loading -------------------------------------------------------------------------
    def _loaded(self, model: PreTrainedModel) -> tuple[MENDNetwork, list[EditSite]]:
        """The hypernetwork and its edit sites in ``model``, loaded and checked on the first call."""
        if self._network is not None and self._sites is not None:
            return self._network, self._sites
        spec = self.spec(model)
        if self.config.layers:
            resolve_layers(model, spec, self.config.layers)  # a layer the model lacks is the first error
        fingerprint = model_fingerprint(model)
        folder = Path(self.config.checkpoint).expanduser() if self.config.checkpoint else default_checkpoint_folder(fingerprint)
        if not folder.exists():
            raise MENDCheckpointError(
                f"mend: no trained hypernetwork at {folder}; train one with `editscope mend train --model <model> --out DIR` "
                f"and pass it with --mend-checkpoint DIR (or --hp checkpoint=DIR)"
            )
        checkpoint = load_checkpoint(folder)
        checkpoint.check_model(fingerprint)
        trained = checkpoint.meta["config"]
        sites = edit_sites(model, spec, trained["layers"], trained["parts"])
        if self.config.layers:
            wanted = set(resolve_layers(model, spec, self.config.layers))
            have = {site.layer for site in sites}
            if wanted != have:
                raise ConfigError(f"mend: layers {sorted(wanted)} asked for, but {folder} was trained for layers {sorted(have)}")
        network = checkpoint.build_network()
        if [s.slot for s in sites] != list(network.slots):
            raise MENDCheckpointError(f"{folder}: its edited weights {[s.name for s in network.slots]} do not match this model's")
        self._network = network.to(model.get_input_embeddings().weight.device)
        self._sites = sites
        chosen = trained.get("autocast") if self.config.autocast == "trained" else self.config.autocast
        self._autocast = resolve(chosen, input_device(model), "mend.autocast")
        return self._network, self._sites

    # -- Editor hooks --------------------------------------------------------------------
    def prepare(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Load the hypernetwork and check it was trained for this (unedited) model."""
        self._loaded(model)

    def edited_parameters(self, model: PreTrainedModel) -> list[str]:
        return [site.name for site in self._loaded(model)[1]]

    def compute_delta(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
    ) -> WeightDelta:
        self.check_requests(requests)
        network, sites = self._loaded(model)
        spec = self.spec(model)
        batch = request_batch(model, tokenizer, requests)
        rows = torch.arange(len(requests), device=batch.input_ids.device)
        kwargs = {**batch.forward_kwargs(), "use_cache": False}
        with autocast(batch.input_ids.device, self._autocast):
            factors, _ = gradient_factors(model, sites, kwargs, lambda logits: per_row_nll(logits, batch, rows).sum())
        deltas = {}
        with torch.no_grad():
            for index, site in enumerate(sites):
                u = tokens_of(factors.u[site.name], batch.attention_mask)
                delta = tokens_of(factors.delta[site.name], batch.attention_mask)
                update = self.config.edit_scale * network.weight_delta(index, u, delta)  # (out, in), float32
                param = model.get_parameter(site.name)
                deltas[site.name] = spec.to_stored(update).to(dtype=param.dtype, device=param.device).contiguous()
        return WeightDelta(deltas)

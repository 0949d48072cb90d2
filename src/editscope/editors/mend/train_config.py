"""MEND's training hyperparameters (:class:`MENDTrainConfig`) and how a checkpoint's saved config is read back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from editscope.config import ConfigError, from_dict, to_dict
from editscope.editors.mend.locality import DIVERGENCES
from editscope.precision import normalize


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
        steps: training steps (count). 1400: 1594 s (26.6 min) for SmolLM2-135M at 0.88 steps/s with
            the other defaults (one thread, bf16 autocast, this project's 2-core CPU shared with another
            job), so within 30 min; 1656 s with ``target_lift_weight`` 0.2 the same way, and 0.887 s per
            step (about 21 min for 1400) with two threads on the idle machine. The text and extra
            neighbor rows make a step about twice as long as with one neighbor prompt only (0.57 s),
            which fit 2500 steps in the same time.
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
        loc_weight: ``c_loc``, weight of the locality KL (Eq. 4c). MEND: 1. 5 here (with
            ``loc_text_share`` 0.5: 2.5 on each KL): on the demo set the hypernetwork's edits spill onto
            the neighbors of edits it never trained on (after 2500 steps at ``c_loc`` 1 the neighborhood
            score of 30 training requests dropped 0.007 when each was edited, that of 30 held-out ones
            0.09), and a larger ``c_loc`` trades efficacy for held-out neighborhood. 500-step runs
            (``loc_text_share`` 0.5, 4 text rows, 1 neighbor row; 50 held-out edits, neighborhood 0.788
            unedited): ``c_loc`` 2 gave efficacy
            0.90 / neighborhood drop 0.246, 4 gave 0.84 / 0.196; 10 at share 0.2 gave 0.60 / 0.092.
            The other defaults with ``target_lift_weight`` 0 (1400 steps) gave on all 110 held-out
            edits efficacy 0.927, paraphrase 0.979, neighborhood 0.632 (0.806 unedited: a drop of 0.175)
            and a held-out-text KL of 0.0046 nats/token; neighbor prompts only at ``c_loc`` 1 and 2500 steps (the earlier defaults, same
            time) gave 0.955, 0.994 and 0.649 (drop 0.157): the longer run did better on neighbors.
            On the first 50 held-out edits (the 500-step runs' probe) those gave 0.88 / drop
            0.122 / text KL 0.0049, the earlier defaults 0.92 / 0.118 / 0.0168: the same neighborhood,
            a third of the change to unrelated text.
            No ``c_loc`` setting tried reached a drop near 0.05 at efficacy >= 0.8 (the smallest, 0.092,
            came with efficacy 0.60); the target-lift term did (see ``target_lift_weight``). These runs
            are all with ``target_lift_weight`` 0.
        loc_text_share: ``s``, the share of unrelated text in the locality loss:
            ``L_loc = (1 − s) KL_neighbor + s KL_text`` (both Eq. 4b). ``KL_neighbor`` is the KL at the
            answer positions of ``loc_neighbor_rows`` neighborhood prompts per edit (same relation, other subject);
            ``KL_text`` the KL at every position of ``loc_text_rows`` windows of ``loc_corpus``, as MEND
            (whose loc examples come from an unrelated corpus). 1: text only (the neighbor rows are left
            out of the batch); 0: neighbor prompts only (then ``loc_text_rows`` must be 0).
            The text term keeps unrelated text unchanged but does not protect the neighbors: 500 steps
            with share 0.5 at ``c_loc`` 2 (so the neighbor KL keeps its weight 1) against neighbor prompts
            only at ``c_loc`` 1 halved the mean KL of edited against unedited model on held-out text
            (bundled c4, a corpus not trained on: 0.0082 against 0.0163 nats/token) and ‖ΔW‖_F of the
            largest edited matrix (16.0 against 25.4), at the same efficacy (0.90) and neighborhood drop
            (0.246 against 0.244).
        loc_neighbor_rows: neighborhood prompts per edit and step (count; distinct, at most the request's
            neighbors). MEND draws one loc example per edit. 3 against 1 (500 steps, ``c_loc`` 4, share
            0.5): neighborhood drop 0.164 against 0.196 at efficacy 0.82 against 0.84 -- a better trade
            than a larger ``c_loc`` gives -- for 28 % more time per step.
        loc_corpus: the unrelated text (a :func:`~editscope.data.corpora.load_corpus` source: ``default``
            = the bundled English Wikipedia sample, ``bundled:c4``, a file or folder, ...). Its resolved
            source and content fingerprint are saved in the checkpoint and checked on resume.
        loc_text_rows: text windows per step (count); window ``r`` is scored under the step's edit
            ``r mod groups``. 0 turns the text rows off. Their cost is the KL over the whole vocabulary at
            every position (and one more pass of the model): at 32 tokens, 4 rows took a step from 0.59
            to 0.78 s, 8 rows to 1.21 s (one thread, defaults otherwise, before ``loc_neighbor_rows`` 3).
        loc_text_tokens: tokens per text window (count); documents are cut into consecutive windows of
            this length. 64 instead of 32 (8 rows) took a step from 1.21 to 1.72 s.
        loc_divergence: the divergence of both locality terms, ``forward`` (``KL(p_θ ‖ p_θ̃)``, MEND Eq. 4b),
            ``reverse`` (``KL(p_θ̃ ‖ p_θ)``) or ``symmetric`` (their mean); see
            :func:`~editscope.editors.mend.locality.divergence_per_position`.
        target_lift_weight: ``c_t``, weight of a third loss term (not in MEND): the mean lift of the edit's
            new object on its neighbor prompts where it parts from the neighbor's own answer,
            ``max(0, log p_θ̃(o*_j|n, a_<j) − log p_θ(o*_j|n, a_<j))``
            (:func:`~editscope.editors.mend.locality.target_lift`), so ``L = c_e L_e + c_loc L_loc + c_t L_t``.
            0 is MEND's loss; with ``loc_text_share`` 1 there are no neighbor rows and the term is 0.
            Why: the KL of Eq. 4b weighs each token by the unedited model's probability, so lifting
            ``o*`` -- unlikely on a neighbor prompt -- costs it little even when ``o*`` overtakes the neighbor's answer, which is what the
            neighborhood score counts; the hypernetwork learned relation-wide edits (``o*`` lifted by about 2
            nats on the neighbors while the edit NLL fell from 6.9 to 1.7). 500-step runs (first 50 held-out
            edits; ``c_t`` 0 gave efficacy 0.80, paraphrase 0.98, drop 0.156, text KL 0.0060): ``c_t`` 0.05 gave
            0.74 / 0.97 / 0.118 / 0.0079, 0.2 gave 0.68 / 0.97 / 0.028 / 0.0104, 1 gave 0.38 / 0.91 / -0.014 /
            0.0143; a symmetric divergence instead (``c_t`` 0) gave 0.76 / 0.97 / 0.132 / 0.0060. The full 1400
            steps on all 110 held-out edits: ``c_t`` 0.2 (the default) gave efficacy 0.873, paraphrase 0.985,
            neighborhood 0.751 (0.804 unedited: a drop of **0.053**), text KL 0.0073; ``c_t`` 0.1 gave 0.918 /
            0.982 / 0.720 (drop 0.084) / 0.0064; ``c_t`` 0 (the earlier default) 0.927 / 0.979 / drop 0.175 / 0.0046.
        held_out: fraction of the data set aside for evaluation, never trained on (deterministic in ``seed``).
        seed: seed of the network's initialization, the held-out split and the batch order.
        checkpoint_every: save a checkpoint every this many steps (and at the end).
        autocast: precision of the model's passes (:mod:`editscope.precision`): ``"auto"`` (bf16 where
            the device runs it natively: about 3x faster training on a CPU with AVX-512 BF16 for
            SmolLM2-135M, the first step's losses within 0.01 nats of float32; float32 elsewhere), a
            dtype name, or ``None`` for the model's own precision. The hypernetwork itself always
            computes in float32; the checkpoint records what this resolved to.
    """

    layers: tuple[int, ...] = (-3, -2, -1)
    parts: tuple[str, ...] = ("mlp_in", "mlp_out")
    rank: int = 256
    hidden_layers: int = 1
    step_size_init: float = 1e-4
    steps: int = 1400
    batch_size: int = 8
    group_size: int = 1
    lr: float = 3e-4
    step_size_lr: float = 1e-2
    lr_final: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    edit_weight: float = 0.3
    loc_weight: float = 5.0
    loc_text_share: float = 0.5
    loc_neighbor_rows: int = 3
    loc_corpus: str = "default"
    loc_text_rows: int = 4
    loc_text_tokens: int = 32
    loc_divergence: str = "forward"
    target_lift_weight: float = 0.2
    held_out: float = 0.2
    seed: int = 0
    checkpoint_every: int = 100
    autocast: str | None = "auto"

    def __post_init__(self) -> None:
        where = type(self).__name__
        if not self.layers or not self.parts:
            raise ConfigError(f"{where}: layers and parts must not be empty")
        for name in ("rank", "steps", "batch_size", "group_size", "checkpoint_every", "loc_neighbor_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.hidden_layers < 0:
            raise ConfigError(f"{where}.hidden_layers: must be >= 0, got {self.hidden_layers}")
        for name in ("lr", "step_size_lr", "grad_clip", "step_size_init"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "edit_weight", "loc_weight", "target_lift_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr_final <= 1:
            raise ConfigError(f"{where}.lr_final: must be in (0, 1], got {self.lr_final}")
        if not 0 <= self.held_out < 1:
            raise ConfigError(f"{where}.held_out: must be in [0, 1), got {self.held_out}")
        if not 0 <= self.loc_text_share <= 1:
            raise ConfigError(f"{where}.loc_text_share: must be in [0, 1], got {self.loc_text_share}")
        if self.loc_text_rows < 0:
            raise ConfigError(f"{where}.loc_text_rows: must be >= 0, got {self.loc_text_rows}")
        if self.loc_text_tokens < 2:
            raise ConfigError(f"{where}.loc_text_tokens: must be >= 2, got {self.loc_text_tokens}")
        if not self.loc_corpus.strip():
            raise ConfigError(f"{where}.loc_corpus: empty (use 'default' for the bundled Wikipedia sample)")
        try:
            normalize(self.autocast, f"{where}.autocast")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.loc_divergence not in DIVERGENCES:
            raise ConfigError(f"{where}.loc_divergence: {self.loc_divergence!r} is not one of {', '.join(DIVERGENCES)}")
        if self.loc_text_share > 0 and self.loc_text_rows == 0:
            raise ConfigError(f"{where}.loc_text_rows: 0 text windows, but loc_text_share is {self.loc_text_share}; "
                              f"set loc_text_rows >= 1, or loc_text_share=0 for neighbor prompts only")
        if self.loc_text_share == 0 and self.loc_text_rows > 0:
            raise ConfigError(f"{where}.loc_text_rows: {self.loc_text_rows} text windows would cost time without counting "
                              f"(loc_text_share is 0); set loc_text_rows=0")

    @staticmethod
    def from_mapping(data: dict[str, Any], where: str = "mend train") -> MENDTrainConfig:
        return from_dict(MENDTrainConfig, data, where=where)


RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every"})
"""Config fields a resumed training may change (a new ``steps`` stretches the learning-rate schedule)."""

PREDATING_FIELDS = {"loc_text_share": 0.0, "loc_neighbor_rows": 1, "loc_corpus": "default", "loc_text_rows": 0,
                    "loc_text_tokens": 32, "loc_divergence": "forward", "target_lift_weight": 0.0}
"""What a checkpoint saved before these fields existed was trained with (forward KL on neighbor prompts only)."""


def saved_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The training config recorded in a checkpoint's ``meta``, with the fields it predates filled as it was trained."""
    return {**PREDATING_FIELDS, **meta["config"]}


def changed_settings(meta: dict[str, Any], config: MENDTrainConfig) -> list[str]:
    """The settings of ``config`` that differ from the checkpoint's (``meta``), other than :data:`RESUMABLE_CHANGES`."""
    saved = saved_config(meta)
    return sorted(k for k, v in to_dict(config).items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)

"""What ``editscope findings`` runs for each budget: three post-training runs and one sequential
editing run per editor family, every one a run folder under the findings folder (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from editscope.config import ConfigError
from editscope.posttrain.config import PosttrainConfig, load_posttrain_config
from editscope.runs.config import DEFAULT_INSTRUMENTS, RunConfig, load_run_config

POSTTRAIN_MODES = ("cpt", "full", "lora")
EDITORS = ("ft", "mend", "rome", "memit", "emmet", "alphaedit", "encore")
"""Claim 2's families (FT, MEND, ROME, MEMIT, EMMET, AlphaEdit) and claim 4's norm control (ENCORE)."""


@dataclass(frozen=True)
class Budget:
    """How long each part of the findings runs.

    Attributes:
        posttrain_steps: optimizer steps of each post-training run.
        posttrain_every: steps between norm records (the trend is read from them).
        posttrain_batch: sequences per step.
        posttrain_seq_len: tokens per sequence (continued pre-training windows; pairs are cut to it).
        edits: sequential edits per editor.
        batch_size: edits per editor call (ROME applies a call's edits one after another, as its paper does).
        every: edits between checkpoints.
        downstream_examples: examples per downstream task (100 resolves a 5-point change).
        ends_only: instruments measured only before the first edit and after the last (claim 4 reads
            downstream ability and edit efficacy there alone; on a CPU the few-shot passes cost more than
            the edits, and edit quality, which scores every edit so far, ~40% of a checkpoint's instruments).
        eval_windows: held-out perplexity windows of the post-training runs.
        mend_steps: training steps of MEND's hypernetwork where none is given
            (:mod:`editscope.findings.hypernetwork`; the shipped ``mend train`` default is 1400).
        points: checkpoint edit counts instead of ``every`` (``RunConfig.points``; log-spaced at scale).
        posttrain: whether the budget runs the post-training part (claim 1); ``False`` judges claims 2-4 only.
        editors: the editor families ``editscope findings`` runs where ``--editors`` is not given.
    """

    posttrain_steps: int
    posttrain_every: int
    posttrain_batch: int
    posttrain_seq_len: int
    edits: int
    batch_size: int
    every: int
    downstream_examples: int
    ends_only: tuple[str, ...]
    eval_windows: int
    mend_steps: int
    points: tuple[int, ...] = ()
    posttrain: bool = True
    editors: tuple[str, ...] = EDITORS


BUDGETS: dict[str, Budget] = {
    # a smoke check in minutes: every part runs, the numbers are too short to judge much
    "quick": Budget(posttrain_steps=12, posttrain_every=4, posttrain_batch=2, posttrain_seq_len=64, edits=20, batch_size=5,
                    every=10, downstream_examples=20, ends_only=("downstream",), eval_windows=2, mend_steps=20),  # fmt: skip
    # about an hour for SmolLM2-135M on a 2-core CPU in the AVX2 path (fp32; docs/findings.md gives the measured time and
    # what more edits find: ROME's downstream decay passes two standard errors only near 100 edits, --edits 100)
    "standard": Budget(posttrain_steps=150, posttrain_every=25, posttrain_batch=4, posttrain_seq_len=128, edits=50, batch_size=10,
                       every=20, downstream_examples=100, ends_only=("downstream", "edit_quality"), eval_windows=8, mend_steps=200),  # fmt: skip
    # claims 2-4 at the research's scale on a CPU: 1,000 CounterFact edits in batches of 100 (needs --data), checkpoints at
    # 100, 200, 500 and 1,000; no post-training (claim 1 does not depend on the edit count); ROME's one-at-a-time edits
    # (~6 h for 1,000 on 2 cores) and EMMET (MEMIT's cost again) are left out unless --editors names them
    "scale": Budget(posttrain_steps=0, posttrain_every=1, posttrain_batch=1, posttrain_seq_len=1, edits=1000, batch_size=100,
                    every=100, downstream_examples=100, ends_only=("downstream",), eval_windows=8, mend_steps=200,
                    points=(100, 200, 500), posttrain=False, editors=("ft", "mend", "memit", "alphaedit", "encore")),  # fmt: skip
    # the papers' scale, for a GPU: 10,000 edits in batches of 100 (the ENCORE paper's setting; needs --data with as many, e.g. CounterFact)
    "full": Budget(posttrain_steps=3000, posttrain_every=250, posttrain_batch=8, posttrain_seq_len=256, edits=10000, batch_size=100,
                   every=1000, downstream_examples=100, ends_only=(), eval_windows=16, mend_steps=1400),  # fmt: skip
}


def budget_of(name: str, edits: int | None = None) -> Budget:
    """The budget ``name``, with ``edits`` sequential edits per editor instead of its own where given."""
    if name not in BUDGETS:
        raise ConfigError(f"--budget {name!r}: one of {', '.join(BUDGETS)}")
    if edits is None:
        return BUDGETS[name]
    if edits < 1:
        raise ConfigError(f"--edits: at least 1, got {edits}")
    return replace(BUDGETS[name], edits=edits)


def posttrain_configs(model: str, budget: Budget, out: Path, device: str = "auto") -> list[PosttrainConfig]:
    """The three post-training runs (shipped settings of each mode), ``out/posttrain/<mode>``."""
    if not budget.posttrain:
        return []
    return [
        load_posttrain_config(overrides={
            "mode": mode, "model": model, "steps": budget.posttrain_steps, "every": budget.posttrain_every,
            "batch_size": budget.posttrain_batch, "seq_len": budget.posttrain_seq_len, "eval_windows": budget.eval_windows,
            "save_model": False, "device": device, "out": str(out / "posttrain" / mode),
        })  # fmt: skip
        for mode in POSTTRAIN_MODES
    ]


def edit_configs(
    model: str, budget: Budget, out: Path, *, editors: tuple[str, ...] = EDITORS, data: str = "demo",
    downstream_dir: str | None = None, editor_settings: dict[str, dict] | None = None, instrument_settings: dict[str, dict] | None = None,
) -> list[RunConfig]:
    """One sequential run per editor on the same edits (the first ``budget.edits`` of ``data``), ``out/edits/<editor>``."""
    instruments = [*DEFAULT_INSTRUMENTS, *(["downstream"] if downstream_dir else [])]
    settings = {"downstream": {"data_dir": downstream_dir, "n_examples": budget.downstream_examples}} if downstream_dir else {}
    for name, values in (instrument_settings or {}).items():
        settings[name] = {**settings.get(name, {}), **values}
    return [
        load_run_config(None, {
            "model": model, "editor": editor, "editor_config": dict((editor_settings or {}).get(editor, {})), "data": data,
            "edits": budget.edits, "batch_size": budget.batch_size, "every": budget.every,
            "points": [p for p in budget.points if p < budget.edits],
            "seed": 0, "instruments": instruments, "instrument_config": settings, "out": str(out / "edits" / editor),
            "ends_only": [i for i in budget.ends_only if i in instruments],
        })  # fmt: skip
        for editor in editors
    ]

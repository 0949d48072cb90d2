"""A study: the same edits through several editors, one run folder each (``make demo``: MEMIT vs ENCORE)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editscope.runs.config import DEFAULT_INSTRUMENTS, RunConfig, load_run_config

# Smaller instrument settings for smoke checks (``--quick``): same keys, coarser figures.
QUICK_INSTRUMENTS: dict[str, dict[str, Any]] = {
    "activations": {"n_texts": 8},
    "subspace": {"n_texts": 8},
    "edit_quality": {"generation_prompts": 4, "generation_tokens": 20},
    "perplexity": {"n_windows": 4},
    "downstream": {"n_examples": 20, "tasks": ["sst2", "mmlu"]},
}


@dataclass(frozen=True)
class StudyConfig:
    """Editors compared on the same edits.

    Attributes:
        editors: editor names, one run each.
        model: model for every run.
        data: edit dataset (``demo``: the bundled set).
        edits: edits per run.
        batch_size: requests per editor call.
        every: checkpoint interval (edits).
        seed: ordering seed shared by the runs (the same facts in the same order).
        out: folder holding one run folder per editor.
        downstream_dir: task files for the few-shot downstream instrument; ``None`` leaves it out.
        quick: smaller instrument settings for a smoke check.
    """

    editors: tuple[str, ...] = ("memit", "encore")
    model: str = "smollm2-135m"
    data: str = "demo"
    edits: int = 100
    batch_size: int = 10
    every: int = 50
    seed: int = 0
    out: str = "runs/demo"
    downstream_dir: str | None = None
    quick: bool = False


def study_runs(study: StudyConfig) -> list[RunConfig]:
    """One validated :class:`RunConfig` per editor."""
    instruments = list(DEFAULT_INSTRUMENTS)
    settings: dict[str, dict[str, Any]] = {}
    if study.downstream_dir is not None:
        instruments.append("downstream")
        settings["downstream"] = {"data_dir": study.downstream_dir}
    if study.quick:
        for name in instruments:
            settings[name] = {**QUICK_INSTRUMENTS.get(name, {}), **settings.get(name, {})}
        settings = {k: v for k, v in settings.items() if v}
    return [
        load_run_config(None, {
            "model": study.model, "editor": editor, "data": study.data, "edits": study.edits,
            "batch_size": study.batch_size, "every": study.every, "seed": study.seed,
            "instruments": instruments, "instrument_config": settings, "out": str(Path(study.out) / editor),
        })
        for editor in study.editors
    ]

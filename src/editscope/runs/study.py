"""A study: the same edits through several editors, one run folder each (``make demo``: MEMIT vs ENCORE)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from editscope.config import ConfigError, from_dict
from editscope.registry import did_you_mean
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
class StudyArm:
    """One run of a study: an editor with settings of its own.

    Attributes:
        name: the run folder's name (and its label in tables and figures).
        editor: registered editor name.
        editor_config: settings over the editor's defaults (e.g. ``{prune: true}`` for PRUNE on MEMIT).
        edits: this run's edits where it differs from the study's (the scale study runs its costlier
            arms half as long); ``None``: the study's.
    """

    name: str
    editor: str
    editor_config: Mapping[str, Any] = field(default_factory=dict)
    edits: int | None = None


@dataclass(frozen=True)
class StudyPreset:
    """A named study shipped with editscope (``runs/studies.yaml``), run by ``editscope demo --study NAME``.

    Attributes:
        description: what the study shows, one sentence.
        arms: the runs compared.
        edits: edits per run (default of ``--edits``).
        every: checkpoint interval (default of ``--every``).
        known_only: edit only facts the model knows (``False``: every fact; needed beyond 154 demo edits).
        data: the edit set it needs (``demo``: the bundled one; ``None``: the user names one with
            ``--data``, e.g. a CounterFact file, and the study refuses to start without it).
        batch_size: requests per editor call (default of ``--batch-size``).
        points: checkpoint edit counts shared by every arm (``RunConfig.points``); empty: ``every``.
        downstream_examples: examples per downstream task where downstream is measured (50 in
            ``make demo``'s 15 minutes; 100 resolves a 5-point change for a study of hours).
    """

    description: str
    arms: tuple[StudyArm, ...]
    edits: int
    every: int
    known_only: bool = True
    data: str | None = "demo"
    batch_size: int = 10
    points: tuple[int, ...] = ()
    downstream_examples: int = 50


def study_presets() -> dict[str, StudyPreset]:
    """The studies shipped in ``runs/studies.yaml``, by name."""
    text = resources.files("editscope.runs").joinpath("studies.yaml").read_text(encoding="utf-8")
    return {name: from_dict(StudyPreset, data, where=f"studies.yaml:{name}") for name, data in yaml.safe_load(text).items()}


def study_preset(name: str) -> StudyPreset:
    presets = study_presets()
    if name not in presets:
        raise ConfigError(f"--study {name!r}: unknown study{did_you_mean(name, list(presets))}; known: {', '.join(sorted(presets))}")
    return presets[name]


@dataclass(frozen=True)
class StudyConfig:
    """Editors compared on the same edits.

    Attributes:
        editors: editor names, one run each (folder named after the editor); ignored when ``arms`` is set.
        arms: runs with their own editor settings (a preset's, e.g. ``--study stability``).
        model: model for every run.
        data: edit dataset (``demo``: the bundled set).
        known_only: edit only facts the model knows (the true object ranked first: the data's
            ``known/<model>`` annotation), as CounterFact's records are facts the edited models know;
            ``False`` edits every fact, including ones the model never learned.
        edits: edits per run (an arm with edits of its own runs ``min(arm.edits, edits)``).
        batch_size: requests per editor call.
        every: checkpoint interval (edits).
        points: checkpoint edit counts instead of ``every`` (``RunConfig.points``).
        seed: ordering seed shared by the runs (the same facts in the same order).
        out: folder holding one run folder per editor.
        downstream_dir: task files for the few-shot downstream instrument (GLUE and MMLU); ``None``: the
            MMLU test split that a pinned package carries (``data_dir: bundled``), so the demo measures downstream
            ability on any machine.
        downstream_autocast: precision of the downstream forward passes (``"auto"``: bf16 where the
            device runs it natively, about twice as fast there; a dtype name; ``None``: the model's own).
        downstream_examples: evaluated examples per task (one example is 2 points at 50; the
            instrument's own default is 100, the size that resolves a 5-point change).
        quick: smaller instrument settings for a smoke check.

    The defaults are ``make demo``'s, sized to finish within 15 minutes from a fresh clone on a
    2-core AVX2 CPU (measured there: 100 edits per editor and 100 examples per task took 20 min).
    """

    editors: tuple[str, ...] = ("memit", "encore")
    arms: tuple[StudyArm, ...] = ()
    model: str = "smollm2-135m"
    data: str = "demo"
    known_only: bool = True
    edits: int = 50
    batch_size: int = 10
    every: int = 50
    points: tuple[int, ...] = ()
    seed: int = 0
    out: str = "runs/demo"
    downstream_dir: str | None = None
    downstream_autocast: str | None = "auto"
    downstream_examples: int = 50
    quick: bool = False


def study_runs(study: StudyConfig) -> list[RunConfig]:
    """One validated :class:`RunConfig` per editor."""
    from editscope.evaluation.tasks import BUNDLED, BUNDLED_TASKS

    instruments = [*DEFAULT_INSTRUMENTS, "downstream"]
    settings: dict[str, dict[str, Any]] = {
        "downstream": {"data_dir": study.downstream_dir or BUNDLED, "autocast": study.downstream_autocast,
                       "n_examples": study.downstream_examples,
                       **({} if study.downstream_dir else {"tasks": list(BUNDLED_TASKS)})},
    }  # fmt: skip
    if study.quick:
        for name in instruments:
            quick = dict(QUICK_INSTRUMENTS.get(name, {}))
            if name == "downstream" and not study.downstream_dir:
                quick.pop("tasks", None)  # the bundled files hold MMLU alone
            settings[name] = {**settings.get(name, {}), **quick}
        settings = {k: v for k, v in settings.items() if v}
    arms = study.arms or tuple(StudyArm(editor, editor) for editor in study.editors)
    names = [arm.name for arm in arms]
    if len(set(names)) < len(names):
        raise ConfigError(f"study: run names must differ, got {names}")
    return [
        load_run_config(None, {
            "model": study.model, "editor": arm.editor, "editor_config": dict(arm.editor_config), "data": study.data,
            "known_only": study.known_only, "edits": min(arm.edits or study.edits, study.edits), "batch_size": study.batch_size,
            "every": study.every, "points": list(study.points),
            "seed": study.seed, "instruments": instruments, "instrument_config": settings, "out": str(Path(study.out) / arm.name),
        })
        for arm in arms
    ]


def prepare_shared(configs: list[RunConfig]) -> None:
    """Convert the model, compute every editor's statistics and warm the instruments' caches once,
    with all of the machine's threads, before runs start side by side.

    The caches (converted model folder, second-moment statistics, the unedited model's downstream
    predictions) are keyed by content, so the runs find them instead of each computing the same
    thing at the same time.
    """
    from editscope.editors import build_editor
    from editscope.models import load
    from editscope.runs.loop import build_instruments

    models = {c.model for c in configs}
    for name in sorted(models):
        loaded = load(name)
        for config in (c for c in configs if c.model == name):
            build_editor(config.editor, dict(config.editor_config), model_name=config.model).prepare(loaded.model, loaded.tokenizer)
            for instrument in build_instruments(config).values():
                instrument.warm_cache(loaded.model, loaded.tokenizer)


def _worker(config_data: dict[str, Any], overwrite: bool, threads: int, progress: Any) -> dict[str, Any]:
    import functools

    import torch

    from editscope.config import from_dict
    from editscope.runs.loop import describe, execute

    torch.set_num_threads(threads)
    config = from_dict(RunConfig, config_data, where="run")
    labelled = functools.partial(progress, Path(config.out).name) if progress is not None else None
    return describe(execute(config, overwrite=overwrite, progress=labelled))


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def side_by_side_jobs(n_runs: int) -> int:
    """Processes for ``n_runs`` runs: one per run, up to the cores. A CPU's threads do not scale
    perfectly (a MEMIT batch of 10 on SmolLM2, AVX2: 46.1 s on one thread, 31.3 s on two), so two
    one-thread runs side by side finish about 1.35x sooner than the same runs one after another."""
    return max(1, min(n_runs, available_cores()))


def run_side_by_side(configs: list[RunConfig], *, jobs: int, overwrite: bool = False, progress: Any = None) -> list[dict[str, Any]]:
    """Run ``configs`` in ``jobs`` processes, the CPU threads split between them.

    On a small CPU, runs side by side with fewer threads each finish sooner than one after another
    (torch's CPU kernels do not scale perfectly with threads). Never more torch threads in all than
    cores: oversubscribed torch processes slow down many times over (measured 10x on 2 cores).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from editscope.config import to_dict

    cores = available_cores()
    jobs = max(1, min(jobs, len(configs), cores))
    threads = max(1, cores // jobs)
    prepare_shared(configs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_worker, to_dict(c), overwrite, threads, progress) for c in configs]
        return [f.result() for f in futures]

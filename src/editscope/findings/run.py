"""``run_findings``: run (or reuse) everything the claims need, then judge each claim and write the page.

The post-training runs and MEND's training come first: joining a Ray cluster they are sweep jobs on its
workers (:mod:`editscope.findings.parts`); on this machine they go one after another in this process with
all its threads. Each resumes from its folder. The editors'
statistics and the unedited model's downstream predictions are then computed once with all threads
(:func:`editscope.runs.study.prepare_shared`, skipped when joining a cluster), and the editing runs go
through the sweep machinery (:func:`editscope.sweep.runner.run_planned`), so they can run on a Ray
cluster, and finished folders are skipped. Nothing is judged until every run is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from editscope.config import ConfigError
from editscope.findings.evidence import EditEvidence, PosttrainEvidence, TaskEvidence, edit_evidence, posttrain_evidence
from editscope.findings.plan import EDITORS, budget_of, edit_configs, posttrain_configs
from editscope.findings.provenance import PartRecord, mend_record, run_folder_record
from editscope.findings.rules import Rules, Verdict, claim1, claim2, claim3, claim4, degrades
from editscope.posttrain.config import PosttrainConfig
from editscope.runs.config import RunConfig


@dataclass(frozen=True)
class FindingsConfig:
    """One ``editscope findings`` call.

    Attributes:
        model: the model every run uses.
        budget: ``quick``, ``standard`` or ``full`` (:data:`editscope.findings.plan.BUDGETS`).
        edits: sequential edits per editor instead of the budget's (``None``: the budget's).
        out: the findings folder (``posttrain/<mode>``, ``edits/<editor>``, ``report/``, ``findings.html``).
        editors: editor families run sequentially.
        data: the edit set (a file, or ``demo`` for the bundled one); the runs edit its first
            ``edits`` requests of the budget, and MEND trains on the rest.
        mend_checkpoint: a trained MEND hypernetwork for ``model`` (``editscope mend train``); without
            it one is trained into ``out/mend`` (:mod:`editscope.findings.hypernetwork`).
        editor_settings: ``{editor: {hyperparameter: value}}`` over each editor's defaults.
        instrument_settings: ``{instrument: {field: value}}`` for every editing run.
        downstream_dir: few-shot task files (claim 4 needs them).
        screen_tasks: measure after editing only the downstream tasks claim 4 reads (above chance on the
            unedited model; :mod:`editscope.findings.screen`); ``False`` measures every task.
        backend: where the editing runs go (``auto``: Ray where installed, else in process).
        ray_address: a Ray cluster to join (the post-training runs and MEND's training go there too).
        threads: torch threads per job on Ray.
        device: device of the post-training runs.
        against: an earlier findings folder whose verdicts the page sets beside these (its
            ``findings.json``; e.g. the 50-edit ``standard`` budget's against ``scale``).
    """

    model: str = "smollm2-135m"
    budget: str = "standard"
    edits: int | None = None
    out: str = "runs/findings"
    editors: tuple[str, ...] = EDITORS
    data: str = "demo"
    mend_checkpoint: str | None = None
    editor_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    instrument_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    downstream_dir: str | None = None
    screen_tasks: bool = True
    backend: str = "auto"
    ray_address: str | None = None
    threads: int = 1
    device: str = "auto"
    against: str | None = None


@dataclass(frozen=True)
class Findings:
    """What the page shows: the evidence, every verdict, what was not run, the downstream tasks
    left out before editing (at chance on the unedited model), and where each part ran (``parts``)."""

    config: FindingsConfig
    posttrain: tuple[PosttrainEvidence, ...]
    edits: tuple[EditEvidence, ...]
    verdicts: tuple[Verdict, ...]
    not_run: dict[str, str] = field(default_factory=dict)
    rules: Rules = Rules()
    screened: tuple[TaskEvidence, ...] = ()
    parts: tuple[PartRecord, ...] = ()
    against: dict[str, Any] | None = None


def planned_editors(config: FindingsConfig) -> tuple[tuple[str, ...], dict[str, str]]:
    """The editors to run (in :data:`EDITORS`' order) and, for those left out, why."""
    unknown = sorted(set(config.editors) - set(EDITORS))
    if unknown:
        raise ConfigError(f"findings --editors: {', '.join(unknown)} not among {', '.join(EDITORS)}")
    return tuple(e for e in EDITORS if e in config.editors), {e: "not asked for (--editors)" for e in EDITORS if e not in config.editors}


def judge(posttrain: list[PosttrainEvidence], edits: list[EditEvidence], rules: Rules = Rules()) -> list[Verdict]:
    """Every verdict, claim by claim (claim 4: each editor's part, then the study's)."""
    verdicts = [claim1(e, rules) for e in posttrain]
    verdicts += [claim2(e, rules) for e in edits if e.editor != "encore"]
    verdicts += [claim3(e, rules) for e in edits if e.editor != "encore"]
    verdicts += [degrades(e, rules) for e in edits]
    verdicts.append(claim4(edits, rules))
    return verdicts


def prepare(config: FindingsConfig, trainings: list[PosttrainConfig], mend: dict[str, Any] | None) -> None:
    """Run the post-training runs and MEND's training (``mend``: :func:`~editscope.findings.parts.mend_payload`,
    ``None`` when not needed): sweep jobs on a Ray cluster that ``config`` joins (on a CPU), else one after
    another here with all threads (faster on one small machine: :mod:`editscope.findings.parts`)."""
    from editscope.findings.parts import mend_work, preparation_jobs, run_posttrain_resumable
    from editscope.models.loading import resolve_device
    from editscope.sweep.config import Resources, SweepConfig
    from editscope.sweep.runner import choose_backend, run_jobs

    on_cpu = resolve_device(config.device).type == "cpu"
    if on_cpu and config.ray_address is not None and choose_backend(config.backend, config.ray_address) == "ray":  # type: ignore[arg-type]
        jobs = preparation_jobs(trainings, mend)
        sweep = SweepConfig(root=config.out, resources=Resources(num_cpus=config.threads), max_retries=1)
        report = run_jobs(jobs, sweep, backend="ray", ray_address=config.ray_address)
        if report.failed:
            raise ConfigError(f"findings: {', '.join(f'{o.name} failed ({o.error})' for o in report.failed)}")
        return
    for c in trainings:
        run_posttrain_resumable(c)
    if mend is not None:
        mend_work(mend, torch.get_num_threads())


def read_against(folder: str) -> dict[str, Any]:
    """What the page compares with from an earlier findings folder: its budget, edit counts and verdicts."""
    import json

    path = Path(folder) / "findings.json"
    if not path.is_file():
        raise ConfigError(f"findings --against {folder}: no findings.json there (run `editscope findings --out {folder}` first)")
    data = json.loads(path.read_text(encoding="utf-8"))
    edits = {e["name"]: e["edits"][-1] for e in data.get("edits", []) if e.get("edits")}
    return {"folder": str(folder), "budget": data.get("budget"), "edits": edits, "verdicts": data.get("verdicts", [])}


def run_findings(config: FindingsConfig) -> Findings:
    """Run what is missing, judge, and write ``findings.html``, ``findings.json`` and the edit runs' report."""
    from editscope.findings.hypernetwork import FOLDER
    from editscope.findings.page import write_findings
    from editscope.findings.parts import mend_payload, posttrain_store
    from editscope.findings.screen import measuring_only, screen_tasks, with_screened
    from editscope.posttrain.loop import decay_alone
    from editscope.report import build_report, load_runs
    from editscope.runs.loop import select_requests
    from editscope.runs.study import prepare_shared
    from editscope.sweep.config import Resources, SweepConfig, SweepRun
    from editscope.sweep.runner import run_planned

    out = Path(config.out)
    budget = budget_of(config.budget, config.edits)
    editors, not_run = planned_editors(config)
    against = read_against(config.against) if config.against else None
    if not budget.posttrain:
        not_run["post-training (claim 1)"] = f"not part of the {config.budget} budget"
    settings = {editor: dict(values) for editor, values in config.editor_settings.items()}
    if config.mend_checkpoint:
        settings["mend"] = {**settings.get("mend", {}), "checkpoint": config.mend_checkpoint}

    def plan(names: tuple[str, ...]) -> list[RunConfig]:
        return edit_configs(config.model, budget, out, editors=names, data=config.data, downstream_dir=config.downstream_dir,
                            editor_settings=settings, instrument_settings=config.instrument_settings)  # fmt: skip

    trainings = posttrain_configs(config.model, budget, out, config.device)
    runs = plan(editors)  # every setting is checked before anything runs (MEND's checkpoint: after its training, below)
    edited = select_requests(runs[0]) if runs else []  # an edit set smaller than the budget fails here
    for c in trainings:  # every folder is checked before anything runs
        store = posttrain_store(c)
        store.check_claim(c, resume=store.saved_config() is not None, overwrite=False)
    train_mend = "mend" in editors and not config.mend_checkpoint
    prepare(config, trainings, mend_payload(config.model, config.data, [r.id for r in edited], budget.mend_steps, out, config.device)
            if train_mend else None)  # fmt: skip
    records = {c.mode: posttrain_store(c).read_metrics() for c in trainings}
    mend_folder = Path(config.mend_checkpoint) if config.mend_checkpoint else out / FOLDER if train_mend else None
    if train_mend:
        settings["mend"] = {**settings.get("mend", {}), "checkpoint": str(mend_folder)}
        runs = [plan(("mend",))[0] if c.editor == "mend" else c for c in runs]
    screened: tuple[TaskEvidence, ...] = ()
    if config.screen_tasks and runs and "downstream" in runs[0].instruments:
        tasks = screen_tasks(runs[0], out)
        screened = tuple(t for t in tasks if t.at_chance)
        runs = [measuring_only(c, [t.task for t in tasks if not t.at_chance]) for c in runs]
    if config.ray_address is None:  # caches live on this machine: fill them once, not in every worker at the same time
        prepare_shared(runs)
    sweep = SweepConfig(root=str(out / "edits"), resources=Resources(num_cpus=config.threads), max_retries=1)
    report = run_planned([SweepRun(c.editor, (("editor", c.editor),), c) for c in runs], sweep,
                         backend=config.backend, ray_address=config.ray_address)  # type: ignore[arg-type]  # fmt: skip
    failed = [o for o in report.outcomes if o.status == "failed"]
    if failed:
        raise ConfigError(f"findings: editing runs failed: {', '.join(f'{o.name} ({o.error})' for o in failed)}")
    loaded = load_runs([c.out for c in runs])
    build_report([c.out for c in runs], out / "report")
    posttrain = [posttrain_evidence(c.mode, records[c.mode], decay_alone(c)) for c in trainings]
    edits = [with_screened(edit_evidence(run), screened) for run in loaded]
    parts = [run_folder_record(f"posttrain/{c.mode}", posttrain_store(c).saved_resolved(), records[c.mode]) for c in trainings]
    parts += [mend_record(mend_folder)] if "mend" in editors and mend_folder is not None else []
    parts += [run_folder_record(f"edits/{c.editor}", run.config.get("resolved") or {}, run.records) for c, run in zip(runs, loaded, strict=True)]
    findings = Findings(config, tuple(posttrain), tuple(edits), tuple(judge(posttrain, edits)), not_run, screened=screened,
                        parts=tuple(parts), against=against)
    write_findings(findings, out)
    return findings

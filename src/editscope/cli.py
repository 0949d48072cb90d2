"""``editscope <command>``: a thin layer over the library. The only place that prints."""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editscope import __version__
from editscope.errors import EditscopeError
from editscope.tables import emit_json, format_table

logger = logging.getLogger("editscope")


_table = format_table
_emit_json = emit_json


# -- models ----------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from editscope.models import BUNDLED_MODELS, MODEL_SPECS, supported_architectures
    from editscope.models.bundled import bundled_folder, is_installed

    archs = []
    for name in supported_architectures():
        spec = MODEL_SPECS.get(name)
        archs.append(
            {
                "name": name,
                "model_types": list(spec.model_types),
                "layers": spec.layers,
                "mlp_out": spec.mlp_out,
                "transposed": spec.transposed,
            }
        )
    bundled = [
        {
            "name": name,
            "description": b.description,
            "installed": is_installed(name),
            "converted": (bundled_folder(name) / "manifest.json").is_file(),
            "install": b.install,
        }
        for name, b in BUNDLED_MODELS.items()
    ]
    if args.json:
        _emit_json({"architectures": archs, "bundled": bundled})
        return 0
    print("Bundled models (pass the name to --model):")
    print(_table([[b["name"], "yes" if b["installed"] else "no", b["description"]] for b in bundled], ["name", "installed", "description"]))
    print("\nSupported architectures (chosen by config.model_type):")
    print(_table([[a["name"], ", ".join(a["model_types"]), a["layers"], a["mlp_out"]] for a in archs], ["spec", "model_type", "layers", "mlp_out"]))
    print("\nAlso accepted: a local Hugging Face model folder, or a hub id where a hub is reachable.")
    return 0


# -- editors ---------------------------------------------------------------------------------
def cmd_editors(args: argparse.Namespace) -> int:
    from importlib import resources

    from editscope.config import to_dict
    from editscope.editors import EDITORS

    listing = []
    for name, cls in EDITORS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        folder = resources.files("editscope.editors").joinpath("hparams", name)
        shipped = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()) if folder.is_dir() else []
        listing.append({"name": name, "summary": doc[0] if doc else "", "defaults": to_dict(cls.config_class()), "shipped_for": shipped})
    if args.json:
        _emit_json(listing)
        return 0
    print(_table([[e["name"], ", ".join(e["shipped_for"]) or "-", e["summary"][:90]] for e in listing], ["editor", "tuned for", "method"]))
    return 0


# -- data ------------------------------------------------------------------------------------
def cmd_data_inspect(args: argparse.Namespace) -> int:
    from editscope.data import inspect_dataset

    report = inspect_dataset(args.path, args.format)
    if args.json:
        _emit_json(
            {
                "path": report.path,
                "format": report.format,
                "count": report.count,
                "requests": len(report.requests),
                "errors": [e.as_dict() for e in report.errors],
                "first": [r.to_dict() for r in report.requests[: args.limit]],
            }
        )
    else:
        print(f"{report.path}: format {report.format}, {report.count} records, {len(report.requests)} requests, {len(report.errors)} errors")
        for request in report.requests[: args.limit]:
            print(f"  [{request.id}] {request.text!r} -> {request.target_new!r} (was {request.target_true!r}); "
                  f"{len(request.paraphrase_prompts)} paraphrases, {len(request.neighborhood)} neighbors")
        for error in report.errors[:20]:
            print(f"  error: {error}")
        if len(report.errors) > 20:
            print(f"  ... and {len(report.errors) - 20} more errors")
    return 1 if report.errors else 0


def _select(requests: list, limit: int | None, seed: int | None) -> list:
    if seed is not None:
        requests = list(requests)
        random.Random(seed).shuffle(requests)
    return requests[:limit] if limit else list(requests)


def cmd_data_rank(args: argparse.Namespace) -> int:
    from editscope.data import load_requests
    from editscope.evaluation.knowledge import probe_knowledge
    from editscope.models import load, model_fingerprint

    requests = _select(load_requests(args.path, args.format), args.limit, None)
    loaded = load(args.model)
    start = time.perf_counter()
    knowledge = probe_knowledge(loaded.model, loaded.tokenizer, requests, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    known = sum(k.known for k in knowledge)
    facts = {k.request_id: {"rank": k.true.first_rank, "logprob": round(k.true.logprob, 4)} for k in knowledge}
    summary = {"model": args.model, "fingerprint": model_fingerprint(loaded.model), "dataset": str(args.path),
               "count": len(knowledge), "known_rank1": known, "seconds": round(seconds, 2)}
    if args.out:
        from editscope.storage import atomic_write_json

        atomic_write_json(args.out, {**summary, "facts": facts})
    if args.json:
        _emit_json({**summary, "facts": facts})
    else:
        print(f"{args.model} knows {known} of {len(knowledge)} facts (true object's first token ranked 1); {seconds:.1f} s")
    return 0


# -- predict ---------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from editscope.data import load_requests
    from editscope.evaluation.knowledge import probe_knowledge
    from editscope.models import load

    start = time.perf_counter()
    loaded = load(args.model)
    load_s = time.perf_counter() - start
    requests = _select(load_requests("demo"), args.limit, args.seed)
    knowledge = probe_knowledge(loaded.model, loaded.tokenizer, requests)
    rows = []
    for request, k in zip(requests, knowledge):
        rows.append([
            request.text[:48],
            request.target_true,
            f"{math.exp(k.true.logprob):.3f}",
            str(k.true.first_rank),
            request.target_new,
            f"{math.exp(k.new.logprob):.4f}",
        ])
    print(f"Model {args.model} ({loaded.spec.name}, {loaded.spec.num_layers(loaded.model)} layers) loaded in {load_s:.1f} s")
    print(f"What it predicts now for {len(requests)} demo facts (seed {args.seed}):\n")
    print(_table(rows, ["prompt", "true object", "P(true)", "rank", "edit target", "P(new)"]))
    known = sum(k.known for k in knowledge)
    print(f"\nKnown (true object ranked 1): {known}/{len(knowledge)}. "
          f"The counterfactual edit targets are what the editors will write in.")
    return 0


# -- run -------------------------------------------------------------------------------------
def _assignments(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise EditscopeError(f"{flag} {item!r}: expected key=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        value = yaml.safe_load(raw)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        node[leaf] = value
    return out


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "model": args.model, "editor": args.editor, "data": args.data, "edits": args.edits,
        "batch_size": args.batch_size, "every": args.every, "log_points": args.log_points,
        "seed": args.seed, "out": str(args.out) if args.out else None, "device_map": args.device_map,
    }
    if args.instruments:
        overrides["instruments"] = [x for x in args.instruments.split(",") if x]
    if args.hp:
        overrides["editor_config"] = _assignments(args.hp, "--hp")
    if args.inst:
        overrides["instrument_config"] = _assignments(args.inst, "--inst")
    if args.mend_checkpoint is not None:
        if args.editor not in (None, "mend"):
            raise EditscopeError(f"--mend-checkpoint is for the mend editor, not {args.editor!r}")
        overrides["editor"] = "mend"
        overrides.setdefault("editor_config", {})["checkpoint"] = str(args.mend_checkpoint)
    if args.downstream_dir is not None:
        from editscope.runs import DEFAULT_INSTRUMENTS

        overrides["instruments"] = [*overrides.get("instruments", DEFAULT_INSTRUMENTS), "downstream"]
        overrides.setdefault("instrument_config", {}).setdefault("downstream", {})["data_dir"] = str(args.downstream_dir)
    return overrides


def _progress_bar(total: int, label: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, unit="edit", dynamic_ncols=True, disable=None)

    def update(done: int, _total: int, metrics: dict[str, float]) -> None:
        bar.update(done - bar.n)
        shown = {k.split("/", 1)[1]: f"{v:.2f}" for k, v in metrics.items() if k in ("edit/efficacy", "edit/score")}
        if shown:
            bar.set_postfix(shown, refresh=False)
        if done >= total:
            bar.close()

    return update


def cmd_run(args: argparse.Namespace) -> int:
    from editscope.runs import RunStore, execute, load_run_config
    from editscope.runs.config import PLACEMENT_FIELDS

    if args.resume is not None:
        saved = RunStore(args.resume).saved_config()
        if saved is None:
            raise EditscopeError(f"--resume {args.resume}: no config.yaml there, nothing to resume")
        given = {k: v for k, v in _run_overrides(args).items() if v is not None and k not in PLACEMENT_FIELDS}
        if given or args.config:
            raise EditscopeError(f"--resume continues the saved config of {args.resume}; drop {', '.join(given) or '--config'}")
        from editscope.config import replace

        where = {"out": str(args.resume), **({"device_map": args.device_map} if args.device_map else {})}
        config = replace(saved, where, where=str(args.resume))  # a moved or copied folder resumes in place
    else:
        config = load_run_config(args.config, _run_overrides(args))
    summary = execute(config, resume=args.resume is not None, overwrite=args.overwrite, progress=_progress_bar(config.edits, config.editor))
    print(f"{summary.folder}: {summary.edits} edits, {summary.records} checkpoints in metrics.jsonl")
    final = summary.final_metrics
    for key in ("edit/efficacy", "edit/score", "weight/mlp_out/balance", "weight/mlp_out/edited_fro_mean"):
        if key in final:
            print(f"  {key} = {final[key]:.4f}")
    return 0


# -- demo study ------------------------------------------------------------------------------
def _summary_table(rows: list[dict[str, Any]]) -> str:
    from editscope.runs.summary import COLUMNS, format_value

    keys = [k for k in COLUMNS if any(k in row for row in rows)]
    return _table([[row["run"], *(format_value(row.get(k, math.nan)) for k in keys)] for row in rows], ["run", *(COLUMNS[k] for k in keys)])


def _print_progress(label: str, done: int, total: int, metrics: dict[str, float]) -> None:
    """Progress line for runs in worker processes (a bar per process would interleave)."""
    if done == total or done % max(total // 10, 1) == 0:
        score = metrics.get("edit/efficacy")
        extra = f", efficacy {score:.2f}" if score is not None else ""
        print(f"  {time.strftime('%H:%M:%S')} {label}: {done}/{total} edits{extra}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from editscope.report import build_report
    from editscope.runs import execute
    from editscope.runs.study import StudyConfig, study_runs
    from editscope.runs.summary import summarize_run

    edits = args.edits or (20 if args.quick else 100)
    study = StudyConfig(
        editors=tuple(e for e in args.editors.split(",") if e), model=args.model, edits=edits, batch_size=args.batch_size,
        every=args.every or edits, seed=args.seed, out=str(args.out),
        downstream_dir=str(args.downstream_dir) if args.downstream_dir else None, quick=args.quick,
    )
    configs = study_runs(study)  # every run is validated before the first starts
    start = time.perf_counter()
    for config in configs:
        print(f"{config.editor}: {config.edits} edits of {config.data} on {config.model} -> {config.out}", flush=True)
    if args.jobs > 1:
        from editscope.runs.study import run_side_by_side

        print(f"running side by side in {min(args.jobs, len(configs))} processes", flush=True)
        run_side_by_side(configs, jobs=args.jobs, overwrite=args.overwrite, progress=_print_progress)
    else:
        for config in configs:
            execute(config, overwrite=args.overwrite, progress=_progress_bar(config.edits, config.editor))
    rows = [summarize_run(config.out) for config in configs]
    report = build_report([Path(c.out) for c in configs], Path(args.out) / "report")
    if args.json:
        _emit_json(rows)
        return 0
    print(f"\nStudy finished in {time.perf_counter() - start:.0f} s; first checkpoint against the last:\n")
    print(_summary_table(rows))
    if study.downstream_dir is None:
        print("\n(downstream ability not measured: pass --downstream-dir with the GLUE/MMLU task files)")
    print(f"\nRun folders: {', '.join(c.out for c in configs)}")
    print(f"Report: {report}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from editscope.runs.summary import summarize_run

    missing = [str(f) for f in args.runs if not (f / "metrics.jsonl").is_file()]
    if missing:
        raise EditscopeError(f"no metrics.jsonl in: {', '.join(missing)}")
    rows = [summarize_run(folder) for folder in args.runs]
    if args.json:
        _emit_json(rows)
    else:
        print(_summary_table(rows))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from editscope.report import ReportConfig, build_report

    def names(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    config = ReportConfig(formats=names(args.formats), dpi=args.dpi, figures=names(args.figures))
    print(build_report(args.runs, args.out, config))
    return 0


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editscope", description="Sequential knowledge editing and model-health instruments.")
    parser.add_argument("--version", action="version", version=f"editscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    models = sub.add_parser("models", help="supported architectures and bundled model names")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    editors = sub.add_parser("editors", help="registered editors, their hyperparameters and tuned defaults")
    editors.add_argument("--json", action="store_true")
    editors.set_defaults(func=cmd_editors)

    data = sub.add_parser("data", help="inspect and annotate edit datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="data-command")
    inspect = data_sub.add_parser("inspect", help="detected format, record count, first records, validation errors")
    inspect.add_argument("path", help="a dataset file, or 'demo' for the bundled demo set")
    inspect.add_argument("--format", choices=None, default=None, help="force a format (counterfact, counterfact-easyedit, zsre, mquake, jsonl)")
    inspect.add_argument("--limit", type=int, default=3, help="how many records to show")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_data_inspect)
    rank = data_sub.add_parser("rank", help="which facts a model knows: rank of the true object")
    rank.add_argument("path", help="a dataset file, or 'demo'")
    rank.add_argument("--model", default="smollm2-135m")
    rank.add_argument("--format", default=None)
    rank.add_argument("--limit", type=int, default=None)
    rank.add_argument("--batch-size", type=int, default=32)
    rank.add_argument("--out", type=Path, default=None, help="write {model, fingerprint, facts: {id: {rank, logprob}}} here")
    rank.add_argument("--json", action="store_true")
    rank.set_defaults(func=cmd_data_rank)

    run = sub.add_parser("run", help="sequential editing with instruments into a run folder (resumable)")
    run.add_argument("--config", type=Path, default=None, help="YAML run config; flags override its values")
    run.add_argument("--model", default=None, help="bundled name, HF folder or hub id (default smollm2-135m)")
    run.add_argument("--editor", default=None, help="editor name (see `editscope editors`)")
    run.add_argument("--data", default=None, help="edit dataset file, or 'demo'")
    run.add_argument("--edits", type=int, default=None, help="number of edits")
    run.add_argument("--batch-size", type=int, default=None, help="requests per editor call")
    run.add_argument("--every", type=int, default=None, help="checkpoint every N edits")
    run.add_argument("--log-points", type=int, default=None, help="N log-spaced checkpoints instead of --every")
    run.add_argument("--seed", type=int, default=None, help="dataset ordering seed")
    run.add_argument("--out", type=Path, default=None, help="run folder")
    run.add_argument("--instruments", default=None, help="comma-separated instrument names")
    run.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="editor hyperparameter (dotted for nested, e.g. z.steps=20)")
    run.add_argument("--inst", action="append", default=[], metavar="NAME.KEY=VALUE", help="instrument setting, e.g. downstream.data_dir=DIR")
    run.add_argument("--downstream-dir", type=Path, default=None, metavar="DIR", help="add few-shot GLUE/MMLU evaluation from the task files in DIR")
    run.add_argument("--device", "--device-map", dest="device_map", default=None,
                     help="where the model runs: cpu (default), cuda, cuda:1, or a strategy spreading it over GPUs (auto, balanced, sequential)")
    run.add_argument("--mend-checkpoint", type=Path, default=None, metavar="DIR", help="trained MEND hypernetwork (implies --editor mend)")
    run.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run folder with a different config")
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", help="summary table of run folders (first checkpoint against last)")
    compare.add_argument("runs", nargs="+", type=Path, help="run folders")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=cmd_compare)

    report = sub.add_parser("report", help="figures (PNG, SVG) and report.html from run folders, runs overlaid")
    report.add_argument("runs", nargs="+", type=Path, help="run folders (finished or still running)")
    report.add_argument("--out", type=Path, required=True, help="report folder (replaced as a whole; new, empty or an earlier report)")
    report.add_argument("--formats", default="png,svg", help="files per figure: png first, then svg and/or pdf (default png,svg)")
    report.add_argument("--dpi", type=int, default=200, help="PNG resolution (default 200)")
    report.add_argument("--figures", default="", help="comma-separated figure names to draw (default: all), e.g. weight_norms,balance")
    report.set_defaults(func=cmd_report)

    from editscope.cli_mend import add_mend_parser

    add_mend_parser(sub)

    predict = sub.add_parser("predict", help="load a model and show what it predicts for demo facts")
    predict.add_argument("--model", default="smollm2-135m")
    predict.add_argument("--limit", type=int, default=20)
    predict.add_argument("--seed", type=int, default=0)
    predict.set_defaults(func=cmd_predict)

    demo = sub.add_parser("demo", help="the study that shows the phenomenon: MEMIT against ENCORE, sequential edits, summary table")
    demo.add_argument("--editors", default="memit,encore", help="comma-separated editors compared")
    demo.add_argument("--model", default="smollm2-135m")
    demo.add_argument("--edits", type=int, default=None, help="edits per run (default 100; --quick 20)")
    demo.add_argument("--batch-size", type=int, default=10)
    demo.add_argument("--every", type=int, default=None, help="checkpoint interval (default: only the first and last)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the run folders")
    demo.add_argument("--downstream-dir", type=Path, default=None, metavar="DIR", help="few-shot GLUE/MMLU task files (adds downstream ability)")
    demo.add_argument("--jobs", type=int, default=1, help="runs side by side in this many processes (CPU threads split between them)")
    demo.add_argument("--quick", action="store_true", help="smoke check: 20 edits, smaller instrument settings")
    demo.add_argument("--overwrite", action="store_true", help="replace run folders made with other settings")
    demo.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    demo.set_defaults(func=cmd_demo)

    from editscope.cli_scale import add_scale_commands
    from editscope.cli_weights import add_weight_commands

    add_scale_commands(sub)
    add_weight_commands(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    if not verbose:
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except EditscopeError as error:
        print(f"editscope: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

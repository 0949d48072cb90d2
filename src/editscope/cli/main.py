"""``editscope <command>``: a thin layer over the library. The only place that prints."""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editscope import __version__
from editscope.cli.output import emit_json, format_table, progress_bar
from editscope.config import parse_assignments
from editscope.errors import EditscopeError

logger = logging.getLogger("editscope")




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
        emit_json({"architectures": archs, "bundled": bundled})
        return 0
    print("Bundled models (pass the name to --model):")
    print(format_table([[b["name"], "yes" if b["installed"] else "no", b["description"]] for b in bundled], ["name", "installed", "description"]))
    print("\nSupported architectures (chosen by config.model_type):")
    print(format_table([[a["name"], ", ".join(a["model_types"]), a["layers"], a["mlp_out"]] for a in archs], ["spec", "model_type", "layers", "mlp_out"]))
    print("\nAlso accepted: a local Hugging Face model folder, or a hub id where a hub is reachable.")
    return 0


# -- env -------------------------------------------------------------------------------------
def cmd_env(args: argparse.Namespace) -> int:
    import torch

    from editscope.precision import OVERRIDE_ENV, precision_record

    devices = ["cpu"] + ([f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    records = [{"device_name": d, **precision_record(d)} for d in devices]
    if args.json:
        emit_json({"editscope": __version__, "devices": records})
        return 0
    rows = [[r["device_name"], r["name"], r["cpu_capability"] if r["device"] == "cpu" else "-", "yes" if r["native_bf16"] else "no",
             r["decided_by"], r["auto"]] for r in records]
    print(format_table(rows, ["device", "model", "cpu capability", "native bf16", "decided by", "auto ->"]))
    first = records[0]
    print(f"\ntorch {first['torch']}, {first['torch_threads']} threads; AVX-512 BF16: {'yes' if first['avx512_bf16'] else 'no'}, "
          f"AMX: {'yes' if first['amx'] else 'no'}")
    probe = first.get("probe")
    if probe:
        print(f"probe ({'x'.join(map(str, probe['shape']))} matrix product): bf16 {probe['bf16_s'] * 1e3:.1f} ms, fp32 {probe['fp32_s'] * 1e3:.1f} ms")
    print(f"{OVERRIDE_ENV}={first['override'] or '(unset)'}: every precision setting left at 'auto' runs in the 'auto ->' column's precision")
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
        emit_json(listing)
        return 0
    print(format_table([[e["name"], ", ".join(e["shipped_for"]) or "-", e["summary"][:90]] for e in listing], ["editor", "tuned for", "method"]))
    return 0


# -- data ------------------------------------------------------------------------------------
def cmd_data_inspect(args: argparse.Namespace) -> int:
    from editscope.data import inspect_dataset

    report = inspect_dataset(args.path, args.format)
    if args.json:
        emit_json(
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
        emit_json({**summary, "facts": facts})
    else:
        print(f"{args.model} knows {known} of {len(knowledge)} facts (true object's first token ranked 1); {seconds:.1f} s")
    return 0


# -- predict ---------------------------------------------------------------------------------
# -- run -------------------------------------------------------------------------------------



def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "model": args.model, "editor": args.editor, "data": args.data, "edits": args.edits,
        "batch_size": args.batch_size, "every": args.every, "log_points": args.log_points,
        "seed": args.seed, "out": str(args.out) if args.out else None, "device_map": args.device_map,
        "known_only": True if args.known_only else None,
    }
    if args.instruments:
        overrides["instruments"] = [x for x in args.instruments.split(",") if x]
    if args.hp:
        overrides["editor_config"] = parse_assignments(args.hp, "--hp")
    if args.inst:
        overrides["instrument_config"] = parse_assignments(args.inst, "--inst")
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
    summary = execute(config, resume=args.resume is not None, overwrite=args.overwrite, progress=progress_bar(config.edits, config.editor))
    print(f"{summary.folder}: {summary.edits} edits, {summary.records} checkpoints in metrics.jsonl")
    final = summary.final_metrics
    for key in ("edit/efficacy", "edit/score", "weight/mlp_out/balance", "weight/mlp_out/edited_fro_mean"):
        if key in final:
            print(f"  {key} = {final[key]:.4f}")
    return 0


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="editscope", description="Sequential knowledge editing and model-health instruments.",
        epilog="Documentation: README.md and docs/ in the source tree (runs, editors, fidelity to the papers' code, "
               "instruments, data, reports, post-training, scale, speed).",
    )
    parser.add_argument("--version", action="version", version=f"editscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    models = sub.add_parser("models", help="supported architectures and bundled model names")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    env = sub.add_parser("env", help="this machine: CPU capability, native bf16, what precision 'auto' resolves to")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=cmd_env)

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
    run.add_argument("--known-only", action="store_true", help="edit only facts the model knows (the data's known/<model> annotation)")
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

    from editscope.cli.predict import add_predict_parser

    add_predict_parser(sub)

    from editscope.cli.scale import add_scale_commands
    from editscope.cli.study import add_study_commands
    from editscope.cli.weights import add_weight_commands

    add_study_commands(sub)
    from editscope.cli.findings import add_findings_parser

    add_findings_parser(sub)
    add_scale_commands(sub)
    add_weight_commands(sub)
    from editscope.cli.export import add_export_commands

    add_export_commands(sub)
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

"""``editscope posttrain`` and ``editscope diff``: weight norms outside editing runs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from editscope.cli.output import emit_json, format_table
from editscope.errors import EditscopeError

POSTTRAIN_FLAGS = ("mode", "model", "data", "answer", "steps", "batch_size", "seq_len", "lr", "weight_decay", "warmup",
                   "schedule", "grad_clip", "every", "eval_windows", "eval_source", "seed", "device", "autocast", "out")


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:+.3f}%"


# -- posttrain -------------------------------------------------------------------------------
def _posttrain_overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in POSTTRAIN_FLAGS if getattr(args, k) is not None}
    if "out" in given:
        given["out"] = str(given["out"])
    lora = {k: getattr(args, f"lora_{k}") for k in ("rank", "alpha", "dropout") if getattr(args, f"lora_{k}") is not None}
    if args.lora_targets:
        lora["target_modules"] = [t for t in args.lora_targets.split(",") if t]
    if lora:
        given["lora"] = lora
    if args.no_save_model:
        given["save_model"] = False
    return given


def posttrain_kind_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Per type of the matrices that moved: count, mean ‖W‖ at the first and last record, mean relative change, how many rose."""
    from editscope.diff import summarize_kinds
    from editscope.diff.compare import diffs_from_records

    moved = [r for r in diffs_from_records(records[0]["metrics"], records[-1]["metrics"]) if r.delta_fro > 0]
    return [[k.kind, str(k.count), f"{k.mean_fro_a:.3f}", f"{k.mean_fro_b:.3f}", _pct(k.mean_norm_change), f"{k.rising}/{k.count}"]
            for k in summarize_kinds(moved)]


def cmd_posttrain(args: argparse.Namespace) -> int:
    from editscope.posttrain import PosttrainConfig, load_posttrain_config, run_posttrain
    from editscope.report.checkpoints import posttrain_figure, write_figure
    from editscope.report.style import FigureStyle
    from editscope.runs import RunStore

    if args.resume is not None:
        saved = RunStore(args.resume, PosttrainConfig, position="step").saved_config()
        if saved is None:
            raise EditscopeError(f"--resume {args.resume}: no config.yaml there, nothing to resume")
        given = [k for k in _posttrain_overrides(args) if k not in ("out", "device")]
        if given or args.config:
            raise EditscopeError(f"--resume continues the saved config of {args.resume}; drop {', '.join(given) or '--config'}")
        from editscope.config import replace

        overrides = {"out": str(args.resume), **({"device": args.device} if args.device else {})}
        config = replace(saved, overrides, where=str(args.resume))
    else:
        config = load_posttrain_config(args.config, _posttrain_overrides(args))
    records = run_posttrain(config, resume=args.resume is not None, overwrite=args.overwrite)
    figure = write_figure(lambda: posttrain_figure(records, FigureStyle(), f"{config.mode}: {config.model}"), Path(config.out) / "norms.png", FigureStyle())
    if args.json:
        emit_json(records[-1])
        return 0
    last = records[-1]
    print(f"{config.out}: {last['step']} steps, {last['tokens']} tokens, {len(records)} records in metrics.jsonl")
    print("updated matrices, first record against the last:\n")
    print(format_table(posttrain_kind_rows(records), ["matrix type", "n", "mean ‖W0‖", "mean ‖W‖", "mean Δ‖W‖/‖W0‖", "rose"]))
    print(f"\nfigure: {figure}")
    return 0


# -- diff ------------------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    from editscope.diff import diff_checkpoints, open_source, summarize_kinds
    from editscope.report.checkpoints import diff_figure, write_figure
    from editscope.report.style import FigureStyle

    a, b = open_source(args.a), open_source(args.b)
    rows = diff_checkpoints(a, b, all_tensors=args.all_tensors)
    kinds = summarize_kinds(rows)
    if args.figure is not None:
        write_figure(lambda: diff_figure(rows, FigureStyle(), f"{args.a} → {args.b}"), args.figure, FigureStyle())
    if args.json:
        emit_json({"a": args.a, "b": args.b, "kinds": [vars(k) for k in kinds], "matrices": [r.to_dict() for r in rows]})
        return 0
    print(f"A = {args.a}\nB = {args.b}\n")
    print(format_table(
        [[k.kind, str(k.count), f"{k.mean_fro_a:.4f}", f"{k.mean_fro_b:.4f}", _pct(k.mean_norm_change), f"{100 * k.mean_relative:.4f}%", f"{k.rising}/{k.count}"] for k in kinds],
        ["matrix type", "n", "mean ‖W_A‖", "mean ‖W_B‖", "mean Δ‖W‖", "mean ‖W_B−W_A‖/‖W_A‖", "rose"],
    ))
    if args.matrices:
        print()
        print(format_table(
            [[r.name, "x".join(map(str, r.shape)), f"{r.fro_a:.4f}", f"{r.fro_b:.4f}", f"{r.delta_fro:.6f}", f"{100 * r.relative:.4f}%"] for r in rows],
            ["tensor", "shape", "‖W_A‖", "‖W_B‖", "‖W_B−W_A‖", "relative"],
        ))
    if args.figure is not None:
        print(f"\nfigure: {args.figure}")
    return 0


def add_weight_commands(sub: Any) -> None:
    """Register ``posttrain`` and ``diff`` on the CLI's subparsers."""
    pt = sub.add_parser("posttrain", help="continued pre-training, full fine-tuning or LoRA, recording every matrix's norm (resumable)")
    pt.add_argument("--config", type=Path, default=None, help="YAML posttrain config; flags override its values")
    pt.add_argument("--mode", choices=("cpt", "full", "lora"), default=None, help="cpt: text corpus; full / lora: prompt-answer pairs")
    pt.add_argument("--model", default=None, help="bundled name, HF folder or hub id (default smollm2-135m)")
    pt.add_argument("--data", default=None, help="cpt: corpus (bundled:c4, a text file/folder); full/lora: demo, edit dataset or instruction JSON(L)")
    pt.add_argument("--answer", choices=("true", "new"), default=None, help="edit datasets: train on the true object or the counterfactual")
    pt.add_argument("--steps", type=int, default=None)
    pt.add_argument("--batch-size", type=int, default=None)
    pt.add_argument("--seq-len", type=int, default=None)
    pt.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the mode's usual one)")
    pt.add_argument("--weight-decay", type=float, default=None)
    pt.add_argument("--warmup", type=float, default=None, help="warm-up as a fraction of the steps")
    pt.add_argument("--schedule", default=None, help="decay after warm-up: cosine, linear, constant_with_warmup, ...")
    pt.add_argument("--grad-clip", type=float, default=None)
    pt.add_argument("--every", type=int, default=None, help="record norms and save the state every N steps")
    pt.add_argument("--eval-windows", type=int, default=None, help="held-out perplexity windows")
    pt.add_argument("--eval-source", default=None, help="held-out perplexity text (default: bundled Wikipedia sample)")
    pt.add_argument("--seed", type=int, default=None)
    pt.add_argument("--device", default=None, help="auto (default), cpu, cuda, ...")
    pt.add_argument("--autocast", default=None, help="precision of the forward passes: auto (default: bf16 where the hardware runs it natively), bf16, fp32")
    pt.add_argument("--lora-rank", type=int, default=None)
    pt.add_argument("--lora-alpha", type=float, default=None)
    pt.add_argument("--lora-dropout", type=float, default=None)
    pt.add_argument("--lora-targets", default=None, help="comma-separated module-name suffixes (default: every linear map in the blocks)")
    pt.add_argument("--no-save-model", action="store_true", help="do not write the final weights to <out>/model")
    pt.add_argument("--out", type=Path, default=None, help="run folder")
    pt.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR from its last record")
    pt.add_argument("--overwrite", action="store_true", help="replace an existing run folder with a different config")
    pt.add_argument("--json", action="store_true", help="print the last record as JSON")
    pt.set_defaults(func=cmd_posttrain)

    diff = sub.add_parser("diff", help="compare two checkpoints matrix by matrix (streamed; HF folders, safetensors files, bundled names, run folders)")
    diff.add_argument("a", help="checkpoint A (reference)")
    diff.add_argument("b", help="checkpoint B")
    diff.add_argument("--json", action="store_true", help="every matrix and the per-type summary as JSON")
    diff.add_argument("--matrices", action="store_true", help="also print one row per matrix")
    diff.add_argument("--all-tensors", action="store_true", help="include vectors (norm gains, biases), not only matrices")
    diff.add_argument("--figure", type=Path, default=None, help="write heat maps (type x layer) to this .png/.svg/.pdf")
    diff.set_defaults(func=cmd_diff)

"""``editscope mend train`` and ``editscope mend info``: part of the CLI layer (prints, progress bar)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from editscope.errors import EditscopeError


def _device(name: str | None) -> Any:
    from editscope.models.loading import resolve_device

    return resolve_device(name or "auto")


def cmd_mend_train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from editscope.config import parse_assignments, to_dict
    from editscope.data import load_requests
    from editscope.editors.mend import MENDTrainConfig, MENDTrainer, default_checkpoint_folder, load_checkpoint, split_requests
    from editscope.editors.mend.checkpoint import HELD_OUT, is_checkpoint
    from editscope.editors.mend.train_config import saved_config
    from editscope.models import load, model_fingerprint

    overrides = parse_assignments(args.set, "--set")
    if args.steps is not None:
        overrides["steps"] = args.steps
    MENDTrainConfig.from_mapping(overrides)  # a typo fails before the model loads
    model_name = args.model
    if model_name is None:
        resumed = args.resume and args.out is not None and is_checkpoint(args.out)
        model_name = json.loads((Path(args.out) / "mend.json").read_text())["model"] if resumed else "smollm2-135m"
    loaded = load(model_name)
    model = loaded.model.to(_device(args.device))
    out = Path(args.out) if args.out else default_checkpoint_folder(model_fingerprint(model))
    saved = None
    if is_checkpoint(out):
        if args.resume:
            saved = load_checkpoint(out, optimizer=True)
        elif not args.overwrite:
            step = json.loads((out / "mend.json").read_text()).get("step")
            raise EditscopeError(f"{out} holds a MEND checkpoint (step {step}): --resume to continue it, --overwrite to start over")
    elif args.resume:
        raise EditscopeError(f"--resume: no MEND checkpoint at {out}")
    config = MENDTrainConfig.from_mapping({**(saved_config(saved.meta) if saved else {}), **overrides})
    data = args.data or (saved.meta["data"]["source"] if saved else "demo")
    requests = load_requests(data, args.format)
    train, held_out = split_requests(requests, config.held_out, config.seed)
    try:
        trainer = MENDTrainer(model, loaded.tokenizer, train, held_out, config, model_name=model_name, data_name=str(data))
    except ValueError as exc:  # a setting that does not fit this model (a layer it lacks)
        raise EditscopeError(f"mend train: {exc}") from None
    if saved is not None:
        trainer.restore(saved)
    print(f"MEND for {model_name} (fingerprint {trainer.fingerprint}): {len(train)} training requests from {data}, "
          f"{len(held_out)} held out (listed in {out / HELD_OUT}); edits {len(trainer.sites)} matrices: "
          f"{', '.join(s.name for s in trainer.sites)}", flush=True)
    print(f"steps {trainer.step} -> {config.steps}, batch {config.batch_size}, checkpoint every {config.checkpoint_every} to {out}", flush=True)
    bar = tqdm(total=config.steps, initial=trainer.step, desc="mend", unit="step", dynamic_ncols=True, disable=None)

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("edit_nll", "loc_kl", "edit_acc")}, refresh=False)

    start = time.perf_counter()
    first_step = trainer.step
    try:
        metrics = trainer.train(out, progress)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    steps_done = trainer.step - first_step
    summary = {
        "out": str(out), "step": trainer.step, "seconds": round(seconds, 1),
        "steps_per_s": round(steps_done / seconds, 4) if seconds > 0 else None,
        "train": len(train), "held_out": len(held_out), "last": metrics, "config": to_dict(config),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        recent = trainer.history[-50:]
        mean = {k: sum(h[k] for h in recent) / len(recent) for k in ("edit_nll", "pre_nll", "loc_kl", "edit_acc")} if recent else {}
        print(f"{out}: step {trainer.step}, {steps_done} steps in {seconds:.0f} s ({summary['steps_per_s']} steps/s)")
        if mean:
            print("  last 50 steps: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
        print(f"  use it: editscope run --editor mend --mend-checkpoint {out} [--data {out / HELD_OUT}]")
    return 0


def cmd_mend_info(args: argparse.Namespace) -> int:
    from editscope.editors.mend import load_checkpoint
    from editscope.editors.mend.train_config import saved_config

    checkpoint = load_checkpoint(args.folder)
    meta = checkpoint.meta
    info = {
        "folder": str(checkpoint.folder), "model": meta.get("model"), "fingerprint": checkpoint.fingerprint,
        "step": checkpoint.step, "complete": meta.get("complete"), "config": saved_config(meta),
        "weights": [s["name"] for s in meta["slots"]],
        "data": {k: v for k, v in meta.get("data", {}).items() if k != "held_out_ids"},
        "held_out": len(meta.get("data", {}).get("held_out_ids", [])),
        "loc_text": meta.get("loc_text"),
        "last": meta["history"][-1] if meta.get("history") else None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['folder']}: MEND for {info['model']} (fingerprint {info['fingerprint']}), step {info['step']}"
              f"{'' if info['complete'] else ' (incomplete)'}, {info['data'].get('train')} training requests from "
              f"{info['data'].get('source')}, {info['held_out']} held out")
        print(f"  edits: {', '.join(info['weights'])}")
        if info["last"]:
            print("  last step: " + ", ".join(f"{k} {v:.4g}" for k, v in info["last"].items()))
    return 0


def add_mend_parser(sub: Any) -> None:
    """The ``mend`` command group."""
    mend = sub.add_parser("mend", help="train MEND hypernetworks (the `mend` editor needs one per model)")
    mend_sub = mend.add_subparsers(dest="mend_command", required=True, metavar="mend-command")
    train = mend_sub.add_parser("train", help="train a MEND hypernetwork for a model (resumable, periodic checkpoints)")
    train.add_argument("--model", default=None, help="bundled name, HF folder or hub id (default: smollm2-135m, or the resumed checkpoint's)")
    train.add_argument("--data", default=None, help="edit dataset file or 'demo' (default: demo; a held-out part is never trained on)")
    train.add_argument("--format", default=None, help="force a dataset format")
    train.add_argument("--steps", type=int, default=None, help="training steps (default: MENDTrainConfig.steps, 1400)")
    train.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: $EDITSCOPE_HOME/mend/<model fingerprint>)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training hyperparameter, e.g. rank=128 (see MENDTrainConfig)")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    train.add_argument("--overwrite", action="store_true", help="start over, replacing the checkpoint in --out")
    train.add_argument("--device", default=None, help="torch device (default: the accelerator torch sees, else cpu)")
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.set_defaults(func=cmd_mend_train)
    info = mend_sub.add_parser("info", help="what a MEND checkpoint was trained for, and how far")
    info.add_argument("folder", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_mend_info)

"""Train MEND on a model with the default settings, then score single edits on the held-out requests.

Usage:
  python benchmarks/mend_train.py [--model smollm2-135m] [--data demo] [--eval-data NAME] [--steps N] [--out DIR]
                                  [--set KEY=VALUE ...] [--resume] [--eval-only] [--eval-limit N] [--edit-scale F]
                                  [--text-corpus SRC] [--text-windows N] [--device cpu|cuda] [--json]

Training runs through the library's trainer (resumable: rerun with --resume after an interruption);
--steps 0 or --eval-only skips it and evaluates the checkpoint in --out. Each held-out request is
edited alone on the unedited model (``compute_delta`` on ``[request]``, applied, scored, restored).

JSON:
  model, device, torch_threads, out, machine (benchmarks/machine.py: CPU capability, precision, forward tokens/s),
  train: {steps_done, step, seconds, steps_per_s, seconds_per_step, last (the last step's losses)},
  eval: {requests, seconds_per_edit, efficacy, paraphrase, neighborhood (after each edit),
         unedited: {efficacy, paraphrase, neighborhood}, neighborhood_drop (unedited - edited),
         text_kl (mean KL(unedited || edited) in nats per token on --text-windows windows of 32 tokens
         of --text-corpus, default bundled:c4, a corpus training does not use by default),
         delta_fro_mean ({param: mean ||ΔW||_F per edit})}
Scores are CounterFact's comparisons (P(new) > P(true) on the prompt / paraphrases; neighbors keep
P(own answer) > P(new)), averaged per request, then over requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from editscope.config import parse_assignments
from editscope.data import load_requests
from editscope.data.corpora import load_corpus
from editscope.editors import build_editor
from editscope.editors.mend import MENDTrainConfig, MENDTrainer, load_checkpoint, split_requests
from editscope.editors.mend.checkpoint import is_checkpoint
from editscope.editors.mend.locality import kl_per_position, text_windows
from editscope.editors.mend.train_config import saved_config
from editscope.evaluation.edit_metrics import edit_scores
from editscope.models import load
from machine import machine_record

KEYS = ("efficacy", "paraphrase", "neighborhood")


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def train(args: argparse.Namespace, model, tokenizer) -> tuple[dict, list]:
    overrides = parse_assignments(args.set, "--set")
    if args.steps is not None:
        overrides["steps"] = args.steps
    saved = load_checkpoint(args.out, optimizer=True) if args.resume and is_checkpoint(args.out) else None
    config = MENDTrainConfig.from_mapping({**(saved_config(saved.meta) if saved else {}), **overrides})
    requests = load_requests(args.data)
    train_set, held_out = split_requests(requests, config.held_out, config.seed)
    if args.eval_data:
        held_out = split_requests(load_requests(args.eval_data), config.held_out, config.seed)[1]
        subjects = {r.subject.casefold() for r in held_out}
        train_set = [r for r in train_set if r.subject.casefold() not in subjects]
        logging.info("training on %d requests of %s (none with a subject of the %d held-out %s requests)",
                     len(train_set), args.data, len(held_out), args.eval_data)
    trainer = MENDTrainer(model, tokenizer, train_set, held_out, config, model_name=args.model, data_name=args.data)
    if saved is not None:
        trainer.restore(saved)
    first = trainer.step
    start = time.perf_counter()
    last = trainer.train(args.out) if not args.eval_only else {}
    seconds = time.perf_counter() - start
    done = trainer.step - first
    report = {
        "steps_done": done, "step": trainer.step, "seconds": round(seconds, 1),
        "steps_per_s": round(done / seconds, 4) if done else None,
        "seconds_per_step": round(seconds / done, 3) if done else None, "last": last,
    }
    return report, held_out


def evaluate(args: argparse.Namespace, model, tokenizer, held_out: list) -> dict:
    requests = held_out[: args.eval_limit] if args.eval_limit else held_out
    editor = build_editor("mend", {"checkpoint": str(args.out), "edit_scale": args.edit_scale})
    editor.prepare(model, tokenizer)
    unedited = {k: [] for k in KEYS}
    edited = {k: [] for k in KEYS}
    norms: dict[str, list[float]] = {}
    device = model.get_input_embeddings().weight.device
    windows = text_windows(tokenizer, load_corpus(args.text_corpus), 32)[: args.text_windows].to(device)
    with torch.no_grad():
        base_text = model(input_ids=windows, use_cache=False).logits
    text_kl = []
    start = time.perf_counter()
    for request in requests:
        for k, v in edit_scores(model, tokenizer, [request]).items():
            unedited[k].append(v)
        delta = editor.compute_delta(model, tokenizer, [request])
        for name, value in delta.fro_norms().items():
            norms.setdefault(name, []).append(value)
        with torch.no_grad(), delta.applied(model):
            for k, v in edit_scores(model, tokenizer, [request]).items():
                edited[k].append(v)
            text_kl.append(float(kl_per_position(base_text, model(input_ids=windows, use_cache=False).logits).mean()))
    seconds = time.perf_counter() - start
    result = {"requests": len(requests), "seconds_per_edit": round(seconds / max(len(requests), 1), 3)}
    result.update({k: round(mean(edited[k]), 4) for k in KEYS})
    result["unedited"] = {k: round(mean(unedited[k]), 4) for k in KEYS}
    result["neighborhood_drop"] = round(result["unedited"]["neighborhood"] - result["neighborhood"], 4)
    result["text_kl"] = round(mean(text_kl), 6)
    result["delta_fro_mean"] = {k: round(mean(v), 4) for k, v in norms.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--eval-data", default=None,
                        help="evaluate on this data set's held-out split instead of --data's (its subjects are left out of training)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: MENDTrainConfig.steps)")
    parser.add_argument("--out", type=Path, default=Path("runs/mend-smollm2-135m"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    parser.add_argument("--eval-only", action="store_true", help="no training: evaluate the checkpoint in --out")
    parser.add_argument("--edit-scale", type=float, default=1.0, help="the mend editor's edit_scale for the evaluation")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N held-out requests")
    parser.add_argument("--text-corpus", default="bundled:c4", help="corpus of the text_kl score (default: bundled:c4)")
    parser.add_argument("--text-windows", type=int, default=8, help="windows of 32 tokens for the text_kl score")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.eval_only:
        args.resume = True
    lm = load(args.model)
    model = lm.model.to(device)
    training, held_out = train(args, model, lm.tokenizer)
    out = {
        "model": args.model, "device": str(device), "torch_threads": torch.get_num_threads(), "out": str(args.out),
        "machine": machine_record(model, lm.tokenizer),
        "train": training, "eval": evaluate(args, model, lm.tokenizer, held_out),
    }
    print(json.dumps(out, indent=2) if args.json else out)


if __name__ == "__main__":
    main()

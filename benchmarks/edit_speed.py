"""Editing speed on the bundled model, on this machine, in one run.

Usage: python benchmarks/edit_speed.py [--model smollm2-135m] [--editors memit,...] [--json]
       [--stats-samples 1000] [--stats-seq-len 256] [--z-batch 16] [--device auto|cpu|cuda]
       [--precision auto|fp32|bf16] [--study stability]

``--study NAME`` times the runs of a shipped study (``editscope demo --study``) instead of
``--editors``: each run's editor with its settings (PRUNE, RECT, norm anchors on MEMIT, ...).

On a GPU every timed region ends with ``torch.cuda.synchronize``. ``--precision`` sets
``EDITSCOPE_PRECISION`` for the run: what every ``auto`` precision setting resolves to (``fp32``
measures the float32 path on a machine with native bf16).

JSON keys:
  model, device, torch_threads
  machine: the machine block of ``benchmarks/machine.py`` (CPU capability, native bf16, what
      ``auto`` resolved to, ``forward_tokens_per_s`` of a plain full forward on this machine)
  editors: {name: {"batch1_s_per_edit", "batch10_s_per_edit", "batch10_forward_tokens_per_edit",
      "efficacy_batch10"}}
      seconds per edit with statistics excluded (C0 computed before timing); ROME's "batch 10" is
      ten edits one after another; forward tokens per edit: seconds per edit x the machine's
      forward tokens/s (comparable across machines); efficacy: P(target_new) > P(target_true) on
      the edit prompts.
  stats: {"layers", "texts", "tokens", "seconds", "tokens_per_s"} for the one-pass statistics
      of the MEMIT layers (no cache);
  stats_bf16: the same pass with bf16 autocast: {"seconds", "tokens_per_s", "max_rel_fro_diff_vs_fp32"}
      (the largest relative Frobenius difference of C0 from the float32 pass over the layers), only
      where ``auto`` resolves to bf16 (elsewhere a bf16 pass takes PyTorch's slow fallback);
  z_batched_vs_looped: {"batch", "batched_s", "looped_s", "speedup"} for z* of ``--z-batch``
      requests at once against one request at a time, same steps (MPES off, fixed steps);
  peak_rss_mb: peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time

import torch

from editscope.data import load_requests
from editscope.data.corpora import load_corpus
from editscope.editors import EDITORS, build_editor
from editscope.editors.locate import LocateEditor
from editscope.evaluation.edit_metrics import efficacy
from editscope.linalg.stats import collect_second_moments, token_chunks
from editscope.linalg.values import ZConfig, compute_z
from editscope.models import load
from editscope.models.loading import resolve_device
from editscope.precision import OVERRIDE_ENV
from editscope.runs.study import StudyArm, study_preset
from editscope.types import preserved
from machine import forward_token_cost, machine_record


def is_locate(name: str) -> bool:
    """Editors that read second-moment statistics (their sample count is a benchmark option)."""
    return issubclass(EDITORS.get(name), LocateEditor)

def sync() -> None:
    """Wait for queued GPU work so that wall-clock timers measure it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_editor(lm, arm: StudyArm, requests, stats_samples, stats_seq_len, model_name):
    name = arm.editor
    sizes = {"stats_samples": stats_samples, "stats_seq_len": stats_seq_len} if is_locate(name) else {}
    editor = build_editor(name, {**sizes, **arm.editor_config}, model_name=model_name)
    if hasattr(editor, "prepare"):
        editor.prepare(lm.model, lm.tokenizer)  # statistics and templates: excluded from timing
    out = {}
    for size in (1, 10):
        batch = requests[:size]
        with preserved(lm.model, editor.edited_parameters(lm.model)):
            start = time.perf_counter()
            for chunk in ([[r] for r in batch] if name == "rome" else [batch]):
                editor.compute_delta(lm.model, lm.tokenizer, chunk).apply_to(lm.model)
            sync()
            out[f"batch{size}_s_per_edit"] = round((time.perf_counter() - start) / size, 3)
            if size == 10:
                out["efficacy_batch10"] = efficacy(lm.model, lm.tokenizer, batch)
    return out




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--editors", default="memit,emmet,alphaedit,encore,rome,lora,ft,ft-l")
    parser.add_argument("--stats-samples", type=int, default=1000)
    parser.add_argument("--stats-seq-len", type=int, default=256)
    parser.add_argument("--z-batch", type=int, default=16)
    parser.add_argument("--skip-stats", action="store_true", help="skip the statistics and forward throughput part")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, ...")
    parser.add_argument("--precision", default=None, help="EDITSCOPE_PRECISION for this run: auto, fp32 or bf16")
    parser.add_argument("--study", default=None, help="time the runs of this shipped study (e.g. stability) instead of --editors")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.precision:
        os.environ[OVERRIDE_ENV] = args.precision
    lm = load(args.model)
    lm.model.to(resolve_device(args.device))
    requests = [r for r in load_requests("demo") if r.meta.get(f"known/{args.model}", {}).get("rank") == 1]
    machine = machine_record(lm.model, lm.tokenizer)
    logging.info("machine: %s", machine)
    result: dict = {"model": args.model, "device": str(next(lm.model.parameters()).device), "torch_threads": torch.get_num_threads(),
                    "machine": machine}

    if not args.skip_stats:
        layers = list(build_editor("memit", model_name=args.model).config.layers)
        corpus = load_corpus("default")
        chunks = token_chunks(lm.tokenizer, corpus, args.stats_samples, args.stats_seq_len)
        tokens = sum(len(c) for c in chunks)
        start = time.perf_counter()
        fp32 = collect_second_moments(lm.model, lm.spec, layers, chunks)
        sync()
        seconds = time.perf_counter() - start
        result["stats"] = {"layers": layers, "texts": len(chunks), "tokens": tokens, "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds)}
        if machine["auto"] == "bfloat16":
            start = time.perf_counter()
            bf16 = collect_second_moments(lm.model, lm.spec, layers, chunks, autocast="bfloat16")
            sync()
            seconds = time.perf_counter() - start
            rel = max(float((bf16[l].mean() - fp32[l].mean()).norm() / fp32[l].mean().norm()) for l in layers)
            result["stats_bf16"] = {"seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds), "max_rel_fro_diff_vs_fp32": rel}
        logging.info("stats %s", result["stats"])

    editor = build_editor("memit", {"stats_samples": args.stats_samples, "stats_seq_len": args.stats_seq_len}, model_name=args.model)
    editor.prepare(lm.model, lm.tokenizer)
    zcfg = ZConfig(steps=10, loss_stop=0.0)
    batch = requests[: args.z_batch]
    layer = max(editor.config.layers)
    compute_z(lm.model, lm.tokenizer, lm.spec, layer, batch[:2], editor._templates, ZConfig(steps=1, loss_stop=0.0))  # warm-up
    sync()
    start = time.perf_counter()
    compute_z(lm.model, lm.tokenizer, lm.spec, layer, batch, editor._templates, zcfg)
    sync()
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for r in batch:
        compute_z(lm.model, lm.tokenizer, lm.spec, layer, [r], editor._templates, zcfg)
    sync()
    looped = time.perf_counter() - start
    result["z_batched_vs_looped"] = {"batch": len(batch), "batched_s": round(batched, 2), "looped_s": round(looped, 2), "speedup": round(looped / batched, 2)}
    logging.info("z* %s", result["z_batched_vs_looped"])

    result["editors"] = {}
    arms = study_preset(args.study).arms if args.study else [StudyArm(n, n) for n in args.editors.split(",")]
    for arm in arms:
        timed = time_editor(lm, arm, requests, args.stats_samples, args.stats_seq_len, args.model)
        timed["batch10_forward_tokens_per_edit"] = forward_token_cost(timed["batch10_s_per_edit"], machine)
        result["editors"][arm.name] = timed
        logging.info("%s %s", arm.name, result["editors"][arm.name])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()

"""Sweep throughput (runs per minute) on this machine: Ray against in-process, on tiny models.

Usage: OMP_NUM_THREADS=1 python benchmarks/sweep_throughput.py [--runs 8] [--edits 40] [--all-threads] [--json]

The same grid of tiny-llama MEMIT/ENCORE runs (editors x seeds, ``--edits`` edits each, checkpoints
every 5 edits, weights + activations + edit-quality instruments) goes through three setups, each
into a fresh root, with the statistics cache warmed first so every setup does the same work:

- ``inprocess_1thread``: one run after another in this process, one torch thread each;
- ``inprocess_all_threads`` (with ``--all-threads``): one after another, each run with every core's
  thread (do not run it beside other torch work: oversubscribed, it slows down many times over);
- ``ray``: a local Ray instance over every core, one run per core side by side (one thread each),
  Ray's start-up included.

JSON: {"machine" (the precision record), "cores", "load_avg" (1-minute, at the end; other work on the machine slows every setup), "runs", "edits", "setups": {name: {"seconds", "runs_per_minute", "backend", "threads"}},
"ray_speedup" (over inprocess_1thread), "ray_speedup_over_inprocess_all_threads" (with --all-threads)}

What to expect on a cluster: runs are independent, so throughput grows with the number of
concurrent runs until the shared storage or the statistics pass bound it -- about one run per
``resources.num_cpus`` cores (or per GPU with ``num_gpus``) across all nodes, less Ray's fixed cost
(a few seconds to start or join, about a second to start each worker's Python). Tiny models make
that fixed cost look large: on real models a run takes minutes to hours and the overhead vanishes.
Compute the statistics once beforehand (``editscope stats --shards K``), or every run of a model
computes the same C0 at the same time. On this 2-core machine two one-thread runs side by side can
at best double the in-process rate; with runs of a few seconds Ray's start-up and per-worker imports
eat that and more. Measured here (shared machine, 1-minute load average 4.6 on 2 cores), 8 runs of
40 edits: in process 20.1 runs/min (3.0 s a run), Ray 11.2 runs/min (including about 5 s of start-up);
4 runs of 20 edits at load 4.0: in process 48.5, Ray 14.0 runs/min.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from editscope.precision import precision_record


def tiny_folder(root: Path) -> Path:
    from editscope.models import tiny_model

    folder = root / "tiny-llama"
    model, tokenizer, _ = tiny_model("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sweep_file(root: Path, model: Path, name: str, runs: int, edits: int, num_cpus: int) -> Path:
    data = {
        "base": {
            "model": str(model), "edits": edits, "batch_size": 5, "every": 5,
            "editor_config": {"layers": [1, 2], "context_lengths": [], "stats_samples": 200, "stats_seq_len": 32, "z": {"steps": 20}, "mom2_update_weight": 10.0},
            "instruments": ["weights", "activations", "edit_quality"],
            "instrument_config": {"activations": {"n_texts": 4, "seq_len": 32}, "edit_quality": {"retention_sample": 5, "generation_prompts": 2, "generation_tokens": 8}},
        },
        "grid": {"editor": ["memit", "encore"], "seed": list(range(max(1, runs // 2)))},
        "root": str(root / name),
        "resources": {"num_cpus": num_cpus},
        "max_retries": 0,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed_sweep(path: Path, backend: str) -> dict:
    from editscope.sweep import load_sweep_config, run_sweep

    sweep = load_sweep_config(path)
    start = time.perf_counter()
    report = run_sweep(sweep, backend=backend)
    seconds = time.perf_counter() - start
    if report.failed:
        raise SystemExit(f"{path.stem}: {len(report.failed)} runs failed: {report.failed[0].error}")
    runs = len(report.outcomes)
    return {"backend": report.backend, "threads": sweep.resources.threads, "runs": runs, "seconds": round(seconds, 2),
            "runs_per_minute": round(60.0 * runs / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="runs per setup (even: editors x seeds)")
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--all-threads", action="store_true", help="also time one-after-another runs with every core's thread each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        root = Path(tmp)
        os.environ["EDITSCOPE_HOME"] = str(root / "home")  # workers inherit it
        model = tiny_folder(root)
        timed_sweep(sweep_file(root, model, "warmup", 2, 5, 1), "inprocess")  # statistics cache, imports
        setups = {"inprocess_1thread": timed_sweep(sweep_file(root, model, "inprocess_1thread", args.runs, args.edits, 1), "inprocess")}
        if args.all_threads:
            setups["inprocess_all_threads"] = timed_sweep(sweep_file(root, model, "inprocess_all_threads", args.runs, args.edits, cores), "inprocess")
        try:
            setups["ray"] = timed_sweep(sweep_file(root, model, "ray", args.runs, args.edits, 1), "ray")
        except Exception as exc:  # Ray missing or not starting: report the in-process figures alone
            print(f"ray: skipped ({exc})", file=sys.stderr)
    result = {"machine": precision_record("cpu"), "cores": cores, "load_avg": round(os.getloadavg()[0], 2), "runs": args.runs, "edits": args.edits, "setups": setups}
    for name, key in (("inprocess_1thread", "ray_speedup"), ("inprocess_all_threads", "ray_speedup_over_inprocess_all_threads")):
        if "ray" in setups and name in setups:
            result[key] = round(setups["ray"]["runs_per_minute"] / setups[name]["runs_per_minute"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, row in setups.items():
        print(f"{name:24s} {row['runs']} runs in {row['seconds']:6.1f} s = {row['runs_per_minute']:6.1f} runs/min ({row['backend']}, {row['threads']} thread(s) per run)")


if __name__ == "__main__":
    main()

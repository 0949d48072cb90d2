"""Flat cost: does a batch cost the same after thousands of edits as at the start?

Two ways in, one table out:

  python benchmarks/flat_cost.py run --editors memit,encore,alphaedit --data FILE --edits 1000 --batch-size 100 --out DIR
      runs each editor sequentially (CounterFact or any edit set; instruments: the weight norms only,
      so checkpoints are cheap and frequent) into ``DIR/<editor>`` -- resumable, as every run is;
  python benchmarks/flat_cost.py read RUN [RUN ...]
      reads run folders made by any sequential run (``editscope run``, ``editscope demo --study scale``);

either way each run gives (from the ``batch_s`` list every checkpoint record carries, and its
``mem/*`` and ``time/*`` metrics):

  batches, batch_size, edits
  first_tenth_s_per_batch / last_tenth_s_per_batch: mean seconds per batch over the first and the last
      tenth of the batches (at least one each), and their ratio ``last_over_first``
  s_per_edit: mean seconds per edit over all batches
  rss_mb_first / rss_mb_last: resident memory at the first and the last checkpoint after editing began;
      peak_rss_mb: the process's peak (ru_maxrss) at the last checkpoint
  checkpoint_measure_s: mean seconds of a checkpoint's measurements (``time/checkpoint_s``)
  state_save_s / state_mb: seconds to write the run's current ``state/`` again (safetensors, atomically,
      to a scratch folder: the cost of a checkpoint's save) and its size on disk
  editor_state_mb: the editor's own state in that folder (ENCORE's and AlphaEdit's key Gram matrices,
      PRUNE's accumulated update) -- the state a method carries whatever the number of edits

``--per-edit-at 10,100`` (with ``run``) also times ``compute_delta`` on the first ``max`` requests at each batch
size on the unedited model, one call per batch, and reports seconds per edit at each size; ``--z-groups 16``
times the largest size again with z* groups of at most 16 (the bound before balanced groups of at most 10).

The JSON carries the ``machine`` block of ``benchmarks/machine.py`` (CPU capability, precision ``auto``
resolved to, torch threads, a plain forward's tokens/s) so figures from different machines compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from editscope.runs.store import RunStore, read_metrics_file


def tenth_means(batch_s: list[float]) -> tuple[float, float]:
    """Mean seconds per batch over the first and the last tenth of the batches (at least one batch each)."""
    k = max(1, len(batch_s) // 10)
    return statistics.fmean(batch_s[:k]), statistics.fmean(batch_s[-k:])


def folder_mb(folder: Path, pattern: str = "*") -> float:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file()) / 2**20


def state_save_seconds(run: Path) -> tuple[float, float, float]:
    """Seconds to write ``run``'s saved state again (a checkpoint's save), its size and the editor state's size (MiB)."""
    store = RunStore(run)
    saved = store.load_state()
    if saved is None:
        return float("nan"), 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        scratch = RunStore(Path(tmp) / "run")
        scratch.path.mkdir()
        start = time.perf_counter()
        scratch.save_state(saved.progress, saved.deltas, saved.editor, saved.instruments)
        seconds = time.perf_counter() - start
    state = run / "state"
    return seconds, folder_mb(state), folder_mb(state, "editor.safetensors")


def read_run(run: Path) -> dict[str, Any]:
    """The flat-cost figures of one run folder (module docstring)."""
    records = read_metrics_file(run / "metrics.jsonl")
    batch_s = [s for r in records for s in r.get("batch_s", [])]
    if not batch_s:
        raise SystemExit(f"{run}: its records carry no batch_s (made before editscope recorded batch times)")
    edited = [r["metrics"] for r in records if r["edits"] > 0]
    first, last = tenth_means(batch_s)
    save_s, state_mb, editor_mb = state_save_seconds(run)
    edits = records[-1]["edits"]
    measure = [m["time/checkpoint_s"] for m in edited if "time/checkpoint_s" in m]
    return {
        "run": str(run), "edits": edits, "batches": len(batch_s), "batch_size": round(edits / len(batch_s)),
        "first_tenth_s_per_batch": round(first, 2), "last_tenth_s_per_batch": round(last, 2),
        "last_over_first": round(last / first, 3), "s_per_edit": round(sum(batch_s) / edits, 3),
        "rss_mb_first": round(edited[0].get("mem/rss_mb", float("nan")), 1),
        "rss_mb_last": round(edited[-1].get("mem/rss_mb", float("nan")), 1),
        "peak_rss_mb": round(edited[-1].get("mem/peak_rss_mb", float("nan")), 1),
        "checkpoint_measure_s": round(statistics.fmean(measure), 2) if measure else None,
        "state_save_s": round(save_s, 3), "state_mb": round(state_mb, 1), "editor_state_mb": round(editor_mb, 1),
    }


def per_edit_at(editor_name: str, sizes: list[int], data: str, model_name: str, seed: int = 0, groups: list[int] | None = None) -> dict[str, float]:
    """Seconds per edit of ``compute_delta`` at each batch size over the same requests (a run's first ``max(sizes)``
    in its seeded order, so the first batch of a run with that seed is comparable), on the unedited model; with
    ``groups``, the largest size again at each z* group bound (``linalg.values.GROUP``: 16 before balanced groups)."""
    from editscope.editors import build_editor
    from editscope.linalg import values
    from editscope.models import load
    from editscope.runs.config import load_run_config
    from editscope.runs.loop import select_requests

    lm = load(model_name)
    requests = select_requests(load_run_config(None, {"model": model_name, "editor": editor_name, "data": data,
                                                      "edits": max(sizes), "seed": seed}))
    out = {}
    for size in sizes:
        editor = build_editor(editor_name, {}, model_name=model_name)
        editor.prepare(lm.model, lm.tokenizer)  # statistics: cached, not timed
        start = time.perf_counter()
        for i in range(0, len(requests), size):
            editor.compute_delta(lm.model, lm.tokenizer, requests[i : i + size])
        out[f"batch{size}_s_per_edit"] = round((time.perf_counter() - start) / len(requests), 3)
    shipped = values.GROUP
    for group in groups or []:
        values.GROUP = group
        editor = build_editor(editor_name, {}, model_name=model_name)
        editor.prepare(lm.model, lm.tokenizer)
        start = time.perf_counter()
        editor.compute_delta(lm.model, lm.tokenizer, requests)
        out[f"batch{len(requests)}_group{group}_s_per_edit"] = round((time.perf_counter() - start) / len(requests), 3)
    values.GROUP = shipped
    return out


def machine(model_name: str) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from editscope.models import load
    from machine import machine_record

    lm = load(model_name)
    return {**machine_record(lm.model, lm.tokenizer), "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    run = sub.add_parser("run", help="run each editor sequentially, then read its folder")
    run.add_argument("--editors", default="memit,encore,alphaedit")
    run.add_argument("--model", default="smollm2-135m")
    run.add_argument("--data", required=True, help="edit set (e.g. EasyEdit's counterfact-edit.json)")
    run.add_argument("--edits", type=int, default=1000)
    run.add_argument("--batch-size", type=int, default=100)
    run.add_argument("--every", type=int, default=None, help="checkpoint interval (default: every tenth of the run)")
    run.add_argument("--per-edit-at", default="", help="batch sizes to time compute_delta at, e.g. 10,100")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--z-groups", default="", help="with --per-edit-at: the largest size again at these z* group bounds, e.g. 16")
    run.add_argument("--per-edit-only", action="store_true", help="only the --per-edit-at timing, no sequential run")
    read = sub.add_parser("read", help="read existing run folders")
    read.add_argument("runs", nargs="+", type=Path)
    read.add_argument("--model", default="smollm2-135m")
    for p in (run, read):
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        p.add_argument("--no-machine", action="store_true", help="skip the machine block (its forward pass)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": None if args.no_machine else machine(args.model)}
    folders = list(getattr(args, "runs", []) or [])
    if args.mode == "run":
        from editscope.runs import execute
        from editscope.runs.config import load_run_config

        editors = [e for e in args.editors.split(",") if e]
        for editor in [] if args.per_edit_only else editors:
            config = load_run_config(None, {
                "model": args.model, "editor": editor, "data": args.data, "edits": args.edits, "batch_size": args.batch_size,
                "every": args.every or max(args.batch_size, args.edits // 10), "instruments": ["weights"],
                "out": str(args.out / editor),
            })
            execute(config, resume=(args.out / editor / "config.yaml").is_file())
            folders.append(args.out / editor)
        sizes = [int(s) for s in args.per_edit_at.split(",") if s]
        if sizes:
            groups = [int(g) for g in args.z_groups.split(",") if g]
            result["per_edit"] = {e: per_edit_at(e, sizes, args.data, args.model, groups=groups) for e in editors}
    result["runs"] = [read_run(Path(f)) for f in folders]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Seconds per checkpoint of each default instrument on the bundled model, against one edit batch.

Usage: python benchmarks/instrument_cost.py [--model smollm2-135m] [--data-dir DIR] [--editor memit]
       [--batch-size 10] [--repeats 2] [--downstream-autocast bfloat16] [--json]

Instruments are built as a run builds them (default settings; ``downstream`` when ``--data-dir``
has the task files). The edit-quality instrument scores a realistic history: 100 edited requests
(its retention sample) and a latest batch. Each checkpoint is measured after a MEMIT-sized
perturbation of the edited layers. One real edit batch of ``--batch-size`` demo requests is timed
with ``--editor`` (statistics loaded beforehand, excluded) to put the costs in proportion.

JSON: {"model", "threads", "machine" (benchmarks/machine.py), "edit_batch_s", "checkpoint_s", "instruments": {name: {"baseline_s",
"measure_s_median", "keys", "pct_of_edit_batch"}}}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from editscope.data import load_requests
from editscope.editors import build_editor
from editscope.models import load
from editscope.runs.config import DEFAULT_INSTRUMENTS, build_instrument, load_run_config
from editscope.types import WeightDelta
from machine import machine_record

SHARED = Path(os.environ.get("EDITSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(SHARED / "knowledge_editing_glue_eval" / "jsonl"))
    parser.add_argument("--editor", default="memit")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--downstream-autocast", default="auto", help="auto (as `make demo` uses), bfloat16 or null")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    instruments = [*DEFAULT_INSTRUMENTS, *(["downstream"] if Path(args.data_dir).is_dir() else [])]
    settings = {"downstream": {"data_dir": args.data_dir, "autocast": args.downstream_autocast}} if "downstream" in instruments else {}
    config = load_run_config(None, {"model": args.model, "instruments": instruments, "instrument_config": settings})
    lm = load(args.model)
    requests = load_requests("demo")
    random.Random(0).shuffle(requests)
    history, batch = requests[:100], requests[100 : 100 + args.batch_size]

    editor = build_editor(args.editor, model_name=args.model)
    editor.prepare(lm.model, lm.tokenizer)
    start = time.perf_counter()
    editor.compute_delta(lm.model, lm.tokenizer, batch)
    edit_batch_s = time.perf_counter() - start
    edited = editor.edited_parameters(lm.model)

    out: dict = {"model": args.model, "threads": torch.get_num_threads(), "machine": machine_record(lm.model, lm.tokenizer),
                 "edit_batch_s": round(edit_batch_s, 2), "instruments": {}}
    for name in instruments:
        instrument = build_instrument(config, name)
        instrument.watch(edited)
        instrument.plan(history + batch)
        start = time.perf_counter()
        instrument.baseline(lm.model, lm.tokenizer)
        baseline_s = time.perf_counter() - start
        instrument.observe(history)
        instrument.observe(batch)
        times, keys = [], 0
        for i in range(args.repeats):
            g = torch.Generator().manual_seed(i)
            params = dict(lm.model.named_parameters())
            delta = WeightDelta({n: torch.randn(params[n].shape, generator=g) * 1e-3 for n in edited})
            with delta.applied(lm.model):
                start = time.perf_counter()
                keys = len(instrument.measure(lm.model, lm.tokenizer))
                times.append(time.perf_counter() - start)
        median = statistics.median(times)
        out["instruments"][name] = {
            "baseline_s": round(baseline_s, 3), "measure_s_median": round(median, 4), "keys": keys,
            "pct_of_edit_batch": round(100 * median / edit_batch_s, 3),
        }
    out["checkpoint_s"] = round(sum(v["measure_s_median"] for v in out["instruments"].values()), 2)
    print(json.dumps(out, indent=2) if args.json else out)


if __name__ == "__main__":
    main()

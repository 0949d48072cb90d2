"""Seconds per checkpoint of the downstream (few-shot GLUE/MMLU) and perplexity instruments on the bundled model.

Usage: python benchmarks/downstream_cost.py [--model smollm2-135m] [--data-dir DIR] [--json]

Defaults: every task, 100 examples each, 4 shots; perplexity on the default corpus. One
``baseline`` and one ``measure`` per instrument (measure on the unedited model, so the scores are
the unedited model's and ``agree`` is 1).

JSON: {"model", "threads", "load_avg", "machine" (benchmarks/machine.py), "downstream": {"baseline_s", "measure_s", "tokens": {task:
{"prefix", "queries"}}, "scores": {task: {"acc", "f1", "mcc"}}}, "perplexity": {"baseline_s",
"measure_s", "windows", "tokens", "ppl"}}
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from editscope.instruments.downstream import DownstreamAbility, DownstreamConfig, Perplexity, PerplexityConfig
from editscope.models import load
from machine import machine_record

SHARED = Path(os.environ.get("EDITSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(SHARED / "knowledge_editing_glue_eval" / "jsonl"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lm = load(args.model)
    out: dict = {"model": args.model, "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0],
                 "machine": machine_record(lm.model, lm.tokenizer)}

    downstream = DownstreamAbility(DownstreamConfig(data_dir=args.data_dir))
    _, baseline_s = timed(lambda: downstream.baseline(lm.model, lm.tokenizer))
    metrics, measure_s = timed(lambda: downstream.measure(lm.model, lm.tokenizer))
    encoded = downstream.encoded(lm.tokenizer)
    out["downstream"] = {
        "baseline_s": baseline_s,
        "measure_s": measure_s,
        "tokens": {t: {"prefix": len(e.prefix_ids), "queries": sum(len(q) for q in e.query_ids)} for t, e in encoded.items()},
        "scores": {t: {m: round(metrics[f"downstream/{t}/{m}"], 3) for m in ("acc", "f1", "mcc")} for t in encoded},
    }

    perplexity = Perplexity(PerplexityConfig())
    _, baseline_s = timed(lambda: perplexity.baseline(lm.model, lm.tokenizer))
    metrics, measure_s = timed(lambda: perplexity.measure(lm.model, lm.tokenizer))
    windows, scored = perplexity.windows(lm.tokenizer)
    out["perplexity"] = {
        "baseline_s": baseline_s,
        "measure_s": measure_s,
        "windows": list(windows.shape),
        "tokens": int(scored.sum()),
        "ppl": {k: round(v, 3) for k, v in metrics.items()},
    }
    print(json.dumps(out, indent=2) if args.json else out)


if __name__ == "__main__":
    main()

"""One batch of edits on the bundled model: efficacy, paraphrase and neighborhood per editor, and seconds.

Usage: python benchmarks/efficacy_check.py [--editors memit,encore] [--edits 10] [--stats-samples 1000]
                                           [--data FILE] [--set KEY=VALUE ...] [--json]

The edits are the first ``--edits`` demo facts the model knows, or the first records of ``--data``
(a CounterFact / zsRE / own JSONL file).

``--set`` overrides a hyperparameter of every listed editor (e.g. ``--set norm_weight=30``).

JSON: {"machine" (benchmarks/machine.py: CPU capability, precision, forward tokens/s), "before", "results"}; "results" holds one object per editor with keys ("forward_tokens_per_edit": seconds per edit x the forward tokens/s)
  editor, edits, batch_mode ("batch" or "one-at-a-time"), seconds_per_edit (statistics excluded),
  stats_seconds (C0 for the edited layers, 0 when cached), efficacy (P(new) > P(true) on the edit
  prompt), paraphrase (same on paraphrases), neighborhood (neighbors keep P(true answer) > P(new)),
  delta_fro ({param: ||dW||_F}).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from editscope.config import parse_assignments
from editscope.data import load_requests
from editscope.editors import EDITORS, build_editor
from editscope.editors.locate import LocateEditor
from editscope.evaluation.edit_metrics import edit_scores
from editscope.models import load
from editscope.types import preserved
from machine import forward_token_cost, machine_record


def is_locate(name: str) -> bool:
    """Editors that read second-moment statistics (their sample count is a benchmark option)."""
    return issubclass(EDITORS.get(name), LocateEditor)

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--editors", default="memit,emmet,alphaedit,encore,rome,lora,ft,ft-l")
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--data", default=None, help="edit file (default: demo facts the model knows)")
    parser.add_argument("--stats-samples", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lm = load(args.model)
    machine = machine_record(lm.model, lm.tokenizer)
    if args.data:
        requests = load_requests(args.data)[: args.edits]
    else:
        requests = [r for r in load_requests("demo") if r.meta.get(f"known/{args.model}", {}).get("rank") == 1][: args.edits]
    before = edit_scores(lm.model, lm.tokenizer, requests)
    results = []
    for name in args.editors.split(","):
        overrides = {"stats_samples": args.stats_samples} if args.stats_samples and is_locate(name) else {}
        overrides.update(parse_assignments(args.set, "--set"))
        editor = build_editor(name, overrides, model_name=args.model)
        stats_s = 0.0
        if hasattr(editor, "prepare"):
            start = time.perf_counter()
            editor.prepare(lm.model, lm.tokenizer)
            stats_s = time.perf_counter() - start
        one_at_a_time = name == "rome"
        with preserved(lm.model, editor.edited_parameters(lm.model)):
            start = time.perf_counter()
            batches = [[r] for r in requests] if one_at_a_time else [requests]
            deltas = []
            for batch in batches:
                deltas.append(editor.compute_delta(lm.model, lm.tokenizer, batch))
                deltas[-1].apply_to(lm.model)
            seconds = time.perf_counter() - start
            scores = edit_scores(lm.model, lm.tokenizer, requests)
        total = deltas[0]
        for d in deltas[1:]:
            total = total + d
        results.append({
            "editor": name, "edits": len(requests), "batch_mode": "one-at-a-time" if one_at_a_time else "batch",
            "seconds_per_edit": round(seconds / len(requests), 2), "stats_seconds": round(stats_s, 1),
            "forward_tokens_per_edit": forward_token_cost(seconds / len(requests), machine),
            **{k: round(v, 3) for k, v in scores.items()},
            "delta_fro": {k: round(v, 3) for k, v in total.fro_norms().items()},
        })
        logging.info("%s", results[-1])
    out = {"machine": machine, "before": before, "results": results}
    print(json.dumps(out, indent=2) if args.json else out)


if __name__ == "__main__":
    main()

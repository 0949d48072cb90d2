"""One batch of edits on the bundled model: efficacy, paraphrase and neighborhood per editor, and seconds.

Usage: python benchmarks/efficacy_check.py [--editors memit,encore] [--edits 10] [--stats-samples 1000] [--json]

JSON: one object per editor with keys
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

import torch

from editscope.data import load_requests
from editscope.editors import build_editor
from editscope.evaluation import score_targets
from editscope.models import load


def compare(model, tok, prompts, good, bad):
    a = score_targets(model, tok, prompts, good)
    b = score_targets(model, tok, prompts, bad)
    return sum(x.logprob > y.logprob for x, y in zip(a, b)) / max(len(prompts), 1)


def evaluate(model, tok, requests):
    eff = compare(model, tok, [r.text for r in requests], [r.target_new for r in requests], [r.target_true for r in requests])
    para = [(p, r) for r in requests for p in r.paraphrase_prompts]
    par = compare(model, tok, [p for p, _ in para], [r.target_new for _, r in para], [r.target_true for _, r in para])
    neigh = [(n, r) for r in requests for n in r.neighborhood]
    nb = compare(model, tok, [n.prompt for n, _ in neigh], [n.answer for n, _ in neigh], [r.target_new for _, r in neigh])
    return eff, par, nb


def restore(model, pristine) -> None:
    """Copy saved weights back (bit-exact, unlike subtracting the delta)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in pristine.items():
            params[name].copy_(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--editors", default="memit,emmet,alphaedit,encore,rome,lora,ft,ft-l")
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--stats-samples", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lm = load(args.model)
    requests = [r for r in load_requests("demo") if r.meta.get(f"known/{args.model}", {}).get("rank") == 1][: args.edits]
    before = evaluate(lm.model, lm.tokenizer, requests)
    results = []
    for name in args.editors.split(","):
        overrides = {"stats_samples": args.stats_samples} if args.stats_samples and name in {"memit", "emmet", "alphaedit", "encore", "rome"} else {}
        editor = build_editor(name, overrides, model_name=args.model)
        stats_s = 0.0
        if hasattr(editor, "prepare"):
            start = time.perf_counter()
            editor.prepare(lm.model, lm.tokenizer)
            stats_s = time.perf_counter() - start
        start = time.perf_counter()
        one_at_a_time = name == "rome"
        pristine = {n: p.detach().clone() for n, p in lm.model.named_parameters() if n in editor.edited_parameters(lm.model)}
        if one_at_a_time:
            deltas = []
            for r in requests:
                d = editor.compute_delta(lm.model, lm.tokenizer, [r])
                d.apply_to(lm.model)
                deltas.append(d)
        else:
            d = editor.compute_delta(lm.model, lm.tokenizer, requests)
            d.apply_to(lm.model)
            deltas = [d]
        seconds = time.perf_counter() - start
        eff, par, nb = evaluate(lm.model, lm.tokenizer, requests)
        total = deltas[0]
        for d in deltas[1:]:
            total = total + d
        restore(lm.model, pristine)
        results.append({
            "editor": name, "edits": len(requests), "batch_mode": "one-at-a-time" if one_at_a_time else "batch",
            "seconds_per_edit": round(seconds / len(requests), 2), "stats_seconds": round(stats_s, 1),
            "efficacy": eff, "paraphrase": round(par, 3), "neighborhood": round(nb, 3),
            "delta_fro": {k: round(v, 3) for k, v in total.fro_norms().items()},
        })
        logging.info("%s", results[-1])
    out = {"before": dict(zip(["efficacy", "paraphrase", "neighborhood"], before)), "results": results}
    print(json.dumps(out, indent=2) if args.json else out)


if __name__ == "__main__":
    main()

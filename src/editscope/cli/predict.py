"""``editscope predict``: what a model answers; for a run folder, the edited model beside the unedited one."""

from __future__ import annotations

import argparse
import math
import random
import time
from typing import Any

import torch

from editscope.cli.output import format_table


def _p(score: Any) -> str:
    return f"{math.exp(score.logprob):.3f}"


@torch.no_grad()
def next_tokens(model: Any, tokenizer: Any, prompt: str, k: int, new_tokens: int) -> tuple[str, list[tuple[str, float]]]:
    """Greedy continuation of ``prompt`` (``new_tokens`` tokens) and its ``k`` most likely next tokens with probabilities."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    top = torch.topk(probs, k)
    ranked = [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), ranked


def _prompt_table(models: dict[str, Any], tokenizer: Any, prompt: str, k: int, new_tokens: int) -> None:
    for label, model in models.items():
        text, ranked = next_tokens(model, tokenizer, prompt, k, new_tokens)
        print(f"{label}: {prompt}\u2192{text!r}")
        print("  next: " + ", ".join(f"{tok!r} {p:.3f}" for tok, p in ranked))


def _edited_requests_table(run: Any, base: Any, edited: Any, limit: int) -> None:
    """For the run's edited requests (at most ``limit``), P(true) and P(new) before and after, and a neighbor each."""
    from editscope.evaluation.knowledge import probe_knowledge
    from editscope.evaluation.scoring import score_targets
    from editscope.runs import RunStore, select_requests
    from editscope.runs.export import run_deltas

    config = RunStore(run.folder).saved_config()
    _, edits, _ = run_deltas(run)
    requests = select_requests(config)[:edits][:limit]
    before = probe_knowledge(base.model, base.tokenizer, requests)
    after = probe_knowledge(edited.model, edited.tokenizer, requests)
    rows = [[r.text[:44], r.target_true, _p(b.true), _p(a.true), r.target_new, _p(b.new), _p(a.new)]
            for r, b, a in zip(requests, before, after)]  # fmt: skip
    print(f"\nThe first {len(requests)} of its {edits} edited requests, unedited -> edited:\n")
    print(format_table(rows, ["prompt", "true object", "P(true) before", "after", "edit target", "P(new) before", "after"]))
    neighbors = [(r, r.neighborhood[0]) for r in requests if r.neighborhood]
    if not neighbors:
        return
    prompts = [n.prompt for _, n in neighbors]
    answers = [n.answer for _, n in neighbors]
    targets = [r.target_new for r, _ in neighbors]
    nb, na = score_targets(base.model, base.tokenizer, prompts, answers), score_targets(edited.model, edited.tokenizer, prompts, answers)
    tb, ta = score_targets(base.model, base.tokenizer, prompts, targets), score_targets(edited.model, edited.tokenizer, prompts, targets)
    rows = [[p[:44], ans, _p(b), _p(a), t, _p(x), _p(y)] for p, ans, b, a, t, x, y in zip(prompts, answers, nb, na, targets, tb, ta)]
    print("\nA neighbor of each (a fact the edit should leave alone), unedited -> edited:\n")
    print(format_table(rows, ["neighbor prompt", "its answer", "P before", "after", "edit target", "P(target) before", "after"]))


def cmd_predict(args: argparse.Namespace) -> int:
    from editscope.data import load_requests
    from editscope.evaluation.knowledge import probe_knowledge
    from editscope.models import load
    from editscope.runs import RunStore
    from editscope.runs.export import parse_run_ref

    start = time.perf_counter()
    loaded = load(args.model)
    load_s = time.perf_counter() - start
    run = parse_run_ref(args.model)
    print(f"Model {args.model} ({loaded.spec.name}, {loaded.spec.num_layers(loaded.model)} layers) loaded in {load_s:.1f} s")
    if run is not None:
        base = load(RunStore(run.folder).saved_config().model)
        if args.prompt:
            _prompt_table({"unedited": base.model, "edited": loaded.model}, loaded.tokenizer, args.prompt, args.top_k, args.tokens)
        else:
            _edited_requests_table(run, base, loaded, args.limit)
        return 0
    if args.prompt:
        _prompt_table({args.model: loaded.model}, loaded.tokenizer, args.prompt, args.top_k, args.tokens)
        return 0
    requests = list(load_requests("demo"))
    random.Random(args.seed).shuffle(requests)
    requests = requests[: args.limit]
    knowledge = probe_knowledge(loaded.model, loaded.tokenizer, requests)
    rows = [[r.text[:48], r.target_true, _p(k.true), str(k.true.first_rank), r.target_new, f"{math.exp(k.new.logprob):.4f}"]
            for r, k in zip(requests, knowledge)]  # fmt: skip
    print(f"What it predicts now for {len(requests)} demo facts (seed {args.seed}):\n")
    print(format_table(rows, ["prompt", "true object", "P(true)", "rank", "edit target", "P(new)"]))
    known = sum(k.known for k in knowledge)
    print(f"\nKnown (true object ranked 1): {known}/{len(knowledge)}. The counterfactual edit targets are what the editors will write in.")
    return 0


def add_predict_parser(sub: Any) -> None:
    predict = sub.add_parser("predict", help="what a model predicts for demo facts; for a run folder, edited against unedited")
    predict.add_argument("--model", default="smollm2-135m", help="bundled name, HF folder, or a run folder RUN / RUN@EDITS")
    predict.add_argument("--limit", type=int, default=20, help="facts shown")
    predict.add_argument("--seed", type=int, default=0)
    predict.add_argument("--prompt", default=None, help="a prompt of your own: greedy continuation and the top next tokens (before and after, for a run)")
    predict.add_argument("--top-k", type=int, default=5, help="next tokens shown with --prompt")
    predict.add_argument("--tokens", type=int, default=12, help="tokens of greedy continuation with --prompt")
    predict.set_defaults(func=cmd_predict)

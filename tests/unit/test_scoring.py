import pytest
import torch

from editscope.evaluation import encode_pair, score_targets
from editscope.models import TINY_ARCHS, tiny_model

PROMPTS = ["The capital of France is", "Hi", "A much longer prompt about many things and more"]
TARGETS = ["Paris", "there friend", "x"]


def reference_scores(model, tok, prompt, target):
    """Unpadded, full-logits computation of the same quantities."""
    p, t = encode_pair(tok, prompt, target)
    ids = torch.tensor([p + t])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    steps = logprobs[len(p) - 1 : len(p) + len(t) - 1]
    token_lp = steps[torch.arange(len(t)), torch.tensor(t)]
    rank = int((steps[0] > steps[0, t[0]]).sum()) + 1
    hits = steps.argmax(-1) == torch.tensor(t)
    return float(token_lp.sum()), rank, bool(hits.all()), int(hits.sum())


# prompts shared by several targets of different lengths, one-token and longer targets, more
# distinct prompts than a batch holds
SHARED_PROMPTS = PROMPTS + ["Hi", "The capital of France is", "Hi", "Tell me", "The capital of France is"]
SHARED_TARGETS = TARGETS + ["there", "Rome and Milan", "x y z w", "Paris", "x"]


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("batch_size", [8, 2])
def test_batched_cached_scores_match_unpadded_reference(arch, batch_size):
    model, tok, _ = tiny_model(arch)
    scores = score_targets(model, tok, SHARED_PROMPTS, SHARED_TARGETS, batch_size=batch_size)
    assert len(scores) == len(SHARED_PROMPTS)
    for prompt, target, score in zip(SHARED_PROMPTS, SHARED_TARGETS, scores):
        logprob, rank, greedy, correct = reference_scores(model, tok, prompt, target)
        assert score.logprob == pytest.approx(logprob, abs=1e-4), (prompt, target)
        assert score.first_rank == rank
        assert score.greedy == greedy
        assert score.n_correct == correct
        assert score.n_tokens == len(encode_pair(tok, prompt, target)[1])


def test_encode_pair_adds_leading_space(tiny_llama):
    _, tok, _ = tiny_llama
    prompt_ids, target_ids = encode_pair(tok, "The capital is", "Paris")
    assert tok.decode(target_ids) == " Paris"
    assert tok.decode(prompt_ids) == "The capital is"


def test_length_mismatch_raises(tiny_llama):
    model, tok, _ = tiny_llama
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        score_targets(model, tok, ["a", "b"], ["c"])

"""Edit-quality figures: entropy, harmonic mean, sampling, and the instrument on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from editscope.evaluation.edit_quality import harmonic_mean, ngram_entropy, spaced_sample
from editscope.instruments.edit_quality import EditQuality, EditQualityConfig
from editscope.models import tiny_model
from editscope.types import EditRequest, NeighborhoodPrompt, WeightDelta


def test_ngram_entropy_by_hand():
    assert ngram_entropy("the the the the the") == 0.0  # one distinct bigram and trigram
    # "a b c d": 3 distinct bigrams (log2 3), 2 distinct trigrams (log2 2): (2/3 log2 3 + 4/3) / 2
    assert ngram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("") == 0.0
    assert ngram_entropy("Paris is nice. Paris is big.") > ngram_entropy("Paris Paris Paris Paris Paris Paris")


def test_harmonic_mean():
    assert harmonic_mean([1.0, 1.0, 1.0]) == 1.0
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.0, 1.0]) == 0.0
    assert math.isnan(harmonic_mean([]))
    assert math.isnan(harmonic_mean([0.5, float("nan")]))


def test_spaced_sample_spans_the_history():
    items = list(range(100))
    assert spaced_sample(items, 5) == [0, 25, 50, 74, 99]
    assert spaced_sample(items[:3], 5) == [0, 1, 2]
    assert spaced_sample(items, 1) == [99]
    assert spaced_sample(items, 0) == []


def _requests() -> list[EditRequest]:
    neighbors = (NeighborhoodPrompt("The capital of Spain is", "Madrid"), NeighborhoodPrompt("The capital of Italy is", "Rome"))
    return [
        EditRequest(
            id=f"r{i}",
            prompt="The capital of {} is",
            subject=subject,
            target_new=new,
            target_true=true,
            paraphrase_prompts=(f"{subject}'s capital city is",),
            neighborhood=neighbors,
            generation_prompts=(f"{subject} is a country where",),
        )
        for i, (subject, new, true) in enumerate(
            [("France", "Berlin", "Paris"), ("Japan", "Oslo", "Tokyo"), ("Peru", "Cairo", "Lima")]
        )
    ]


def test_instrument_baseline_and_history():
    model, tok, spec = tiny_model("llama")
    requests = _requests()
    instrument = EditQuality(EditQualityConfig(generation_prompts=2, generation_tokens=6))
    instrument.plan(requests)
    with pytest.raises(RuntimeError, match="baseline"):
        instrument.measure(model, tok)
    instrument.baseline(model, tok)
    before = instrument.measure(model, tok)
    assert set(before) == {"edit/entropy"}  # nothing edited yet
    assert before["edit/entropy"] == instrument.measure(model, tok)["edit/entropy"]  # seeded sampling
    instrument.observe(requests[:2])
    instrument.observe(requests[2:])
    unchanged = instrument.measure(model, tok)
    assert unchanged["edit/neighborhood"] == 1.0  # same model as the baseline: every preference kept
    assert unchanged["edit/retention_n"] == 3.0
    assert 0.0 <= unchanged["edit/efficacy"] <= 1.0 and 0.0 <= unchanged["edit/top1"] <= 1.0
    assert (
        unchanged["edit/score"]
        == pytest.approx(
            harmonic_mean([unchanged["edit/efficacy"], unchanged["edit/paraphrase"], unchanged["edit/neighborhood"]])
        )
        or unchanged["edit/score"] == 0.0
    )
    g = torch.Generator().manual_seed(0)
    names = [spec.weight_name(layer) for layer in range(4)]
    noise = WeightDelta({n: torch.randn(model.get_parameter(n).shape, generator=g) for n in names})
    with noise.applied(model):
        broken = instrument.measure(model, tok)
    assert broken["edit/neighborhood"] < 1.0  # a scrambled model no longer agrees with the unedited one


def test_latest_batch_is_scored_separately():
    model, tok, _ = tiny_model("gpt2")
    requests = _requests()
    instrument = EditQuality(EditQualityConfig(generation_prompts=0))
    instrument.plan(requests)
    instrument.baseline(model, tok)
    instrument.observe(requests[:1])
    only_first = instrument.measure(model, tok)
    assert only_first["edit/efficacy"] == only_first["edit/latest/efficacy"]
    instrument.observe(requests[1:])
    both = instrument.measure(model, tok)
    assert "edit/entropy" not in both
    assert both["edit/retention_n"] == 3.0


def test_targets_compare_per_token_as_counterfact_does(monkeypatch):
    """A two-token target at -1.5 nats a token beats a one-token one at -2.0 (CounterFact's mean NLL);
    a sum of log-probabilities (-3.0 against -2.0) would pick the short one."""
    from editscope.evaluation import edit_metrics
    from editscope.evaluation.edit_quality import prefers
    from editscope.evaluation.scoring import TargetScore

    long = TargetScore(-3.0, -1.5, 1, False, 2, 0)
    short = TargetScore(-2.0, -2.0, 1, False, 1, 0)
    assert prefers({("p", "long"): long, ("p", "short"): short}, "p", "long", "short")
    monkeypatch.setattr(
        edit_metrics, "score_targets", lambda model, tok, prompts, targets: [long if t == "long" else short for t in targets]
    )
    assert edit_metrics.preference(None, None, ["p"], ["long"], ["short"]) == 1.0


def test_age_buckets_by_hand():
    from editscope.instruments.edit_quality import age_bucket

    edges = (10, 30, 100)
    assert [age_bucket(a, edges) for a in (0, 9, 10, 29, 30, 99, 100, 5000)] == [
        "0-10",
        "0-10",
        "10-30",
        "10-30",
        "30-100",
        "30-100",
        "100+",
        "100+",
    ]
    with pytest.raises(ValueError, match="age_edges"):
        EditQualityConfig(age_edges=(10, 10))
    with pytest.raises(ValueError, match="age_edges"):
        EditQualityConfig(age_edges=(0, 5))


def test_retention_by_age_groups_edits_by_how_many_came_after():
    """Three batches of one: ages 2, 1, 0 fall into three buckets; the latest batch is the youngest,
    and the buckets together are the retention figure (all three edits are scored)."""
    model, tok, _ = tiny_model("llama")
    requests = _requests()
    instrument = EditQuality(EditQualityConfig(generation_prompts=0, age_edges=(1, 2)))
    instrument.plan(requests)
    instrument.baseline(model, tok)
    for r in requests:
        instrument.observe([r])
    m = instrument.measure(model, tok)
    assert {k for k in m if k.startswith("edit/age/")} == {
        f"edit/age/{b}/{s}" for b in ("0-1", "1-2", "2+") for s in ("efficacy", "paraphrase", "n")
    }
    assert [m[f"edit/age/{b}/n"] for b in ("0-1", "1-2", "2+")] == [1.0, 1.0, 1.0]
    assert m["edit/age/0-1/efficacy"] == m["edit/latest/efficacy"]
    pooled = sum(m[f"edit/age/{b}/efficacy"] for b in ("0-1", "1-2", "2+")) / 3
    assert pooled == pytest.approx(m["edit/efficacy"])
    solo = EditQuality(EditQualityConfig(generation_prompts=0, age_edges=(1, 2)))
    solo.plan(requests[:1])
    solo.baseline(model, tok)
    solo.observe(requests[:1])
    assert solo.measure(model, tok)["edit/age/0-1/efficacy"] == m["edit/age/2+/efficacy"]  # same edit, same (unedited) model

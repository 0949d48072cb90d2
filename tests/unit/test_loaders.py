import copy
import json

import pytest
from tests.conftest import shared_data

from editscope.data import inspect_dataset, load_requests
from editscope.data.loaders import detect_format
from editscope.errors import DataError
from editscope.types import EditRequest, NeighborhoodPrompt

CASES = [
    ("counterfact/counterfact_500.json", "counterfact", 500, 500),
    ("counterfact/counterfact_subset_union_1599.json", "counterfact", 1599, 1599),
    ("easyedit/counterfact/counterfact-edit.json", "counterfact-easyedit", 10000, 10000),
    ("zsre/zsre_mem-eval_subset_1037.json", "zsre", 1037, 1037),
    ("mquake/MQuAKE-hard.json", "mquake", 429, 1716),
]


@pytest.mark.parametrize("relative, fmt, records, requests", CASES)
def test_real_files_load_with_counts(relative, fmt, records, requests):
    path = shared_data(relative)
    report = inspect_dataset(path)
    assert (report.format, report.count, len(report.requests), report.errors) == (fmt, records, requests, ())
    loaded = load_requests(path)
    assert len(loaded) == requests
    assert len({r.id for r in loaded}) == requests


def test_counterfact_fields():
    first = load_requests(shared_data("counterfact/counterfact_500.json"))[0]
    assert first.id == "20952"
    assert (first.prompt, first.subject) == ("{} is located in", "Angola")
    assert (first.target_new, first.target_true, first.relation_id) == ("Antarctica", "Africa", "P30")
    assert len(first.paraphrase_prompts) == 2
    assert len(first.neighborhood) == 10 and all(n.answer == "Africa" for n in first.neighborhood)
    assert len(first.generation_prompts) == 10


def test_easyedit_fields_become_template():
    first = load_requests(shared_data("easyedit/counterfact/counterfact-edit.json"))[0]
    assert first.prompt == "The mother tongue of {} is"
    assert first.text == "The mother tongue of Danielle Darrieux is"
    assert (first.target_new, first.target_true) == ("English", "French")
    assert first.neighborhood == (NeighborhoodPrompt("Michel Rocard is a native speaker of", "French"),)


def test_zsre_fields():
    first = load_requests(shared_data("zsre/zsre_mem-eval_subset_1037.json"))[0]
    assert first.prompt == "When was the inception of {}?"
    assert (first.subject, first.target_new, first.target_true) == ("IAAF Combined Events Challenge", "2006", "1998")
    assert first.paraphrase_prompts == ("When was the IAAF Combined Events Challenge launched?",)
    assert first.neighborhood[0].answer == "The String"
    assert first.meta["qa"] is True


def test_mquake_one_request_per_rewrite():
    requests = load_requests(shared_data("mquake/MQuAKE-hard.json"))
    first = requests[0]
    assert first.id == "7417/0"
    assert (first.subject, first.target_new, first.target_true) == ("Hey Jude", "Madonna", "The Beatles")
    assert first.paraphrase_prompts == ("Who performed Hey Jude?",)
    assert len(first.meta["multi_hop_questions"]) == 3
    assert requests[3].id == "7417/3"


def test_zsre_train_has_two_invalid_records_named_and_skippable():
    path = shared_data("zsre/zsre_mend_train-1k.json")
    report = inspect_dataset(path)
    assert [(e.index, e.field) for e in report.errors] == [(e.index, "alt") for e in report.errors]
    assert len(report.errors) == 2
    with pytest.raises(DataError, match=r"record \d+, field 'alt'"):
        load_requests(path)
    assert len(load_requests(path, skip_invalid=True)) == 998


def test_broken_record_named_and_nothing_loaded(tmp_path):
    records = json.loads(shared_data("counterfact/counterfact_500.json").read_text())
    broken = copy.deepcopy(records)
    broken[137]["requested_rewrite"]["prompt"] = broken[137]["requested_rewrite"]["prompt"].replace("{}", "")
    del broken[301]["requested_rewrite"]["target_new"]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError) as info:
        load_requests(path)
    assert (info.value.index, info.value.field) == (137, "requested_rewrite.prompt")
    assert str(path) in str(info.value)
    report = inspect_dataset(path)
    assert [(e.index, e.field) for e in report.errors] == [(137, "requested_rewrite.prompt"), (301, "requested_rewrite.target_new")]
    assert report.count == 500 and len(report.requests) == 498


def test_wrong_types_named(tmp_path):
    path = tmp_path / "own.jsonl"
    good = {"id": "a", "prompt": "{} plays", "subject": "Messi", "target_new": "tennis", "target_true": "soccer"}
    bad = dict(good, id="b", paraphrase_prompts="not a list")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as info:
        load_requests(path)
    assert (info.value.index, info.value.field) == (1, "paraphrase_prompts")


def test_own_jsonl_round_trip(tmp_path):
    request = EditRequest(
        id="x1", prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris",
        paraphrase_prompts=("France's capital is",), neighborhood=(NeighborhoodPrompt("The capital of Spain is", "Madrid"),),
        generation_prompts=("France is",), relation_id="P36", meta={"k": 1},
    )
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(request.to_dict()) + "\n")
    assert load_requests(path) == [request]
    assert load_requests(path)[0].meta == {"k": 1}


def test_duplicate_ids_refused(tmp_path):
    row = {"id": "a", "prompt": "{} plays", "subject": "Messi", "target_new": "tennis", "target_true": "soccer"}
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match="duplicate id"):
        load_requests(path)


def test_detect_and_unknown_formats(tmp_path):
    with pytest.raises(DataError, match="unknown schema"):
        detect_format([{"foo": 1}], "x.json")
    with pytest.raises(ValueError, match="did you mean 'zsre'"):
        load_requests(tmp_path / "x.json", "zsr")
    missing = tmp_path / "missing.json"
    with pytest.raises(DataError, match="file not found"):
        load_requests(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    with pytest.raises(DataError, match="not valid JSON"):
        load_requests(bad)

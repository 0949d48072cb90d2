"""The collapse point: thresholds parsed from the command line, crossed at the first checkpoint, and shown."""

from __future__ import annotations

import math
import statistics

import pytest

from editscope.config import ConfigError
from editscope.runs.collapse import CollapseRule, agreement_crossed, collapse_point, efficacy_crossed, parse_collapse
from editscope.runs.summary import oldest_bucket_efficacy, summarize_records


def _records(efficacy, ppl, agree) -> list[dict]:
    out = []
    for i, (e, p, a) in enumerate(zip(efficacy, ppl, agree)):
        metrics = {"ppl/wikitext": p, "downstream/sst2/agree": a, "downstream/mmlu/agree": a}
        if e is not None:
            metrics["edit/efficacy"] = e
        out.append({"edits": 100 * i, "metrics": metrics})
    return out


def test_rule_from_the_command_line():
    assert parse_collapse("") == CollapseRule()
    assert parse_collapse("efficacy_below=0.6, ppl_rise_pct=off") == CollapseRule(efficacy_below=0.6, ppl_rise_pct=None)
    with pytest.raises(ConfigError, match="NAME one of"):
        parse_collapse("efficacy=0.5")
    with pytest.raises(ConfigError, match="a number or 'off'"):
        parse_collapse("ppl_rise_pct=lots")
    with pytest.raises(ConfigError, match="fraction"):
        CollapseRule(agreement_below=1.5)
    with pytest.raises(ConfigError, match="positive"):
        CollapseRule(ppl_rise_pct=-3)
    assert CollapseRule().describe() == "retained efficacy < 0.5 or perplexity > +100% or downstream agreement < 0.8"


def test_first_checkpoint_crossing_any_threshold():
    records = _records([None, 0.9, 0.6, 0.4], [20.0, 25.0, 39.0, 80.0], [1.0, 0.95, 0.9, 0.7])
    point = collapse_point(records, CollapseRule())
    assert (point.edits, point.reason) == (300, "retained efficacy 0.400 < 0.5; ppl/wikitext +300% > +100%; downstream agreement 0.700 < 0.8")
    assert collapse_point(records, CollapseRule(efficacy_below=0.7)).edits == 200  # 0.6 < 0.7
    assert collapse_point(records, CollapseRule(ppl_rise_pct=90)).reason == "ppl/wikitext +95% > +90%"
    assert collapse_point(records, CollapseRule(agreement_below=0.92)).edits == 200
    assert collapse_point(records, CollapseRule(efficacy_below=None, ppl_rise_pct=None, agreement_below=None)) is None
    # flip one number: the collapse moves
    records[1]["metrics"]["ppl/wikitext"] = 41.0
    assert collapse_point(records, CollapseRule()).edits == 100
    assert collapse_point([], CollapseRule()) is None


def test_a_mean_equal_to_the_threshold_is_no_crossing():
    # RECT after 300 demo edits: six tasks' agreement averages to 0.8 exactly, 0.7999999999999999 in floats
    agree = {"cola": 0.56, "mmlu": 0.68, "mrpc": 1.0, "nli": 1.0, "rte": 0.66, "sst2": 0.9}
    first = {f"downstream/{t}/agree": 1.0 for t in agree}
    now = {f"downstream/{t}/agree": v for t, v in agree.items()}
    assert statistics.fmean(agree.values()) < 0.8  # the float noise the rule must see through
    assert agreement_crossed(first, now, CollapseRule()) is None
    now["downstream/cola/agree"] = 0.55
    assert agreement_crossed(first, now, CollapseRule()) == "downstream agreement 0.798 < 0.8"
    assert efficacy_crossed({}, {"edit/efficacy": 0.5}, CollapseRule()) is None


def test_summary_row_carries_collapse_and_oldest_bucket():
    records = _records([None, 0.9, 0.3], [20.0, 21.0, 22.0], [1.0, 1.0, 1.0])
    records[2]["metrics"].update({"edit/age/0-10/efficacy": 1.0, "edit/age/100+/efficacy": 0.25, "edit/age/10-30/efficacy": 0.5})
    row = summarize_records(records)
    assert (row["collapse_at"], row["collapse_reason"]) == (200, "retained efficacy 0.300 < 0.5")
    assert row["oldest_efficacy"] == 0.25
    assert summarize_records(records, CollapseRule(efficacy_below=0.2))["collapse_at"] == "none"
    assert math.isnan(oldest_bucket_efficacy({"edit/efficacy": 1.0}))

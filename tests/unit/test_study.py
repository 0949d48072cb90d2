"""The demo study's configs and the summary figures computed from metrics records."""

from __future__ import annotations

import math
import statistics

import pytest
from tests.conftest import shared_data

from editscope.config import ConfigError
from editscope.runs.study import StudyConfig, study_runs
from editscope.runs.summary import format_value, summarize_records


def _record(edits: int, edited: float, unedited_change: float, resid: float, acc: float, ppl: float) -> dict:
    return {
        "edits": edits,
        "wall_s": 1.0,
        "metrics": {
            "weight/mlp_out/edited_fro_mean": edited,
            "weight/mlp_out/unedited_fro_mean": 100.0,
            "weight/mlp_out/balance": edited / 100.0,
            "weight/mlp_out/unedited_max_rel_change": unedited_change,
            "weight/model.layers.1.mlp.down_proj.weight/delta_fro": edited - 100.0,
            "weight/model.layers.2.mlp.down_proj.weight/delta_fro": 0.0,
            "act/layers.0.resid/norm": resid,
            "act/layers.1.resid/norm": 2 * resid,
            "subspace/layers.0.resid/angle_mean": 0.0 if edits == 0 else 10.0,
            "subspace/layers.1.resid/angle_mean": 0.0 if edits == 0 else 20.0,
            "subspace/layers.1.resid/cka": 1.0 if edits == 0 else 0.9,
            "downstream/sst2/acc": acc,
            "downstream/mmlu/acc": acc - 0.1,
            "ppl/wiki": ppl,
            **({"edit/efficacy": 0.9, "edit/score": 0.8} if edits else {}),
        },
    }


def test_summary_from_first_and_last_record():
    rows = summarize_records([_record(0, 100.0, 0.0, 10.0, 0.7, 20.0), _record(50, 110.0, 0.0, 9.0, 0.72, 22.0), _record(100, 125.0, 1e-4, 8.0, 0.6, 30.0)])
    assert rows["edits"] == 100
    assert rows["edited_fro_growth_pct"] == pytest.approx(25.0)
    assert rows["unedited_max_change_pct"] == pytest.approx(0.01)
    assert rows["balance"] == "1.0000 -> 1.2500"
    assert rows["delta_fro_mean"] == pytest.approx(25.0)  # unedited (zero) deltas left out
    assert rows["resid_norm_change_pct"] == pytest.approx(-20.0)
    assert rows["subspace_angle_deg"] == pytest.approx(15.0)
    assert rows["cka_min"] == pytest.approx(0.9)
    assert rows["efficacy"] == 0.9 and rows["edit_score"] == 0.8
    assert rows["downstream_acc_change_pts"] == pytest.approx(-10.0)
    assert rows["ppl_change_pct"] == pytest.approx(50.0)
    assert math.isnan(rows["fluency_x100"])


def test_fluency_is_reported_on_the_papers_scale():
    """Entropy in bits, and x100 as the papers' tables print it (6.22 bits -> 622)."""
    row = summarize_records([{"edits": 0, "metrics": {"edit/entropy": 6.3}}, {"edits": 10, "metrics": {"edit/entropy": 6.22}}])
    assert row["fluency_x100"] == pytest.approx(622.0)


def test_summary_of_a_run_without_optional_instruments():
    record = {"edits": 0, "wall_s": 0.1, "metrics": {"edit/entropy": 5.0}}
    row = summarize_records([record])
    assert row["edits"] == 0 and math.isnan(row["downstream_acc_change_pts"]) and math.isnan(row["efficacy"])
    assert summarize_records([]) == {"edits": 0}


def test_study_runs_share_edits_and_validate_everything():
    runs = study_runs(StudyConfig(edits=30, every=10, out="/tmp/study"))
    assert [r.editor for r in runs] == ["memit", "encore"]
    assert {r.seed for r in runs} == {0} and {r.edits for r in runs} == {30}
    assert [r.out for r in runs] == ["/tmp/study/memit", "/tmp/study/encore"]
    # without task files the demo measures the MMLU sample shipped in the package
    assert "downstream" in runs[0].instruments
    assert runs[0].instrument_config["downstream"]["data_dir"] == "bundled" and runs[0].instrument_config["downstream"]["tasks"] == ["mmlu"]
    quick_bundled = study_runs(StudyConfig(quick=True))[0].instrument_config["downstream"]
    assert quick_bundled["tasks"] == ["mmlu"] and quick_bundled["n_examples"] == 20
    assert all(r.known_only for r in runs)  # facts the model knows, as CounterFact's are
    assert not study_runs(StudyConfig(known_only=False))[0].known_only
    quick = study_runs(StudyConfig(quick=True, downstream_dir=str(shared_data("knowledge_editing_glue_eval/jsonl"))))
    assert quick[0].instrument_config["downstream"]["n_examples"] == 20
    assert quick[0].instrument_config["downstream"]["tasks"] == ["sst2", "mmlu"]
    with pytest.raises(ConfigError, match="data_dir"):
        study_runs(StudyConfig(downstream_dir="/no/such/folder"))
    with pytest.raises(Exception, match="did you mean 'encore'"):
        study_runs(StudyConfig(editors=("memit", "encor")))


def test_unchanged_downstream_accuracy_prints_as_zero_not_float_noise():
    """Per-task changes that cancel (-2, -1, +3 points) leave ~1e-15 in a plain float mean; the summary prints 0."""
    first = {"edits": 0, "metrics": {"downstream/a/acc": 0.74, "downstream/b/acc": 0.44, "downstream/c/acc": 0.68}}
    last = {"edits": 10, "metrics": {"downstream/a/acc": 0.72, "downstream/b/acc": 0.43, "downstream/c/acc": 0.71}}
    assert statistics.fmean([100 * (0.72 - 0.74), 100 * (0.43 - 0.44), 100 * (0.71 - 0.68)]) != 0.0  # the noise guarded against
    row = summarize_records([first, last])
    assert row["downstream_acc_change_pts"] == 0.0 and format_value(row["downstream_acc_change_pts"]) == "0"


def test_side_by_side_jobs_follow_the_cores(monkeypatch):
    import editscope.runs.study as study

    monkeypatch.setattr(study, "available_cores", lambda: 2)
    assert study.side_by_side_jobs(2) == 2 and study.side_by_side_jobs(5) == 2 and study.side_by_side_jobs(1) == 1
    monkeypatch.setattr(study, "available_cores", lambda: 1)
    assert study.side_by_side_jobs(2) == 1


def test_stability_study_runs_each_method_on_the_same_edits():
    """The shipped study: six runs, PRUNE, RECT and norm anchors as options of MEMIT, every fact (300 > 154 known)."""
    import argparse

    from editscope.cli.study import _study
    from editscope.runs.collapse import CollapseRule
    from editscope.runs.study import study_preset

    preset = study_preset("stability")
    runs = study_runs(StudyConfig(arms=preset.arms, edits=preset.edits, every=preset.every, known_only=preset.known_only, out="/s"))
    assert [r.out for r in runs] == [f"/s/{n}" for n in ("memit", "encore", "alphaedit", "prune", "rect", "memit_nas")]
    assert [r.editor for r in runs] == ["memit", "encore", "alphaedit", "memit", "memit", "memit"]
    assert runs[3].editor_config == {"prune": True} and runs[4].editor_config == {"rect_keep": 0.4}
    assert runs[5].editor_config == {"norm_anchor": True} and runs[0].editor_config == {}
    assert {(r.edits, r.every, r.known_only) for r in runs} == {(300, 100, False)}
    with pytest.raises(ConfigError, match="did you mean 'stability'"):
        study_preset("stabilty")
    flags = {"model": "smollm2-135m", "batch_size": 10, "seed": 0, "out": "/s", "quick": False, "downstream_dir": None,
             "edits": None, "every": None, "all_facts": False, "collapse": CollapseRule(), "data": None}  # fmt: skip
    subset = _study(argparse.Namespace(**flags, study="stability", editors="prune,encore"))
    assert [a.name for a in subset.arms] == ["encore", "prune"] and subset.edits == 300 and subset.every == 100
    with pytest.raises(ConfigError, match="not runs of study"):
        _study(argparse.Namespace(**flags, study="stability", editors="memit,rome"))
    plain = _study(argparse.Namespace(**flags, study=None, editors=None))
    assert plain.editors == ("memit", "encore") and plain.arms == () and plain.known_only
    with pytest.raises(ConfigError, match="run names must differ"):
        study_runs(StudyConfig(arms=preset.arms[:1] * 2))


def test_scale_study_needs_an_edit_set_and_shares_its_checkpoints():
    """The shipped scale study: batches of 100 and checkpoints at 100, 200, 500, 1,000, 2,000 edits shared by every
    run; MEMIT, ENCORE and AlphaEdit make 2,000 edits, the other three 1,000; it refuses to start without --data."""
    import argparse

    from editscope.cli.study import _study
    from editscope.runs.collapse import CollapseRule

    flags = {"model": "smollm2-135m", "batch_size": None, "seed": 0, "out": "/s", "quick": False, "downstream_dir": None,
             "edits": None, "every": None, "all_facts": False, "collapse": CollapseRule(), "editors": None}  # fmt: skip
    with pytest.raises(ConfigError, match="needs an edit set of at least 2000 requests: pass --data"):
        _study(argparse.Namespace(**flags, study="scale", data=None))
    study = _study(argparse.Namespace(**flags, study="scale", data="facts.json"))
    assert study.batch_size == 100 and study.downstream_examples == 100 and not study.known_only
    runs = study_runs(study)
    assert [(r.out, r.edits) for r in runs] == [("/s/memit", 2000), ("/s/encore", 2000), ("/s/alphaedit", 2000),
                                                ("/s/memit_nas", 1000), ("/s/rect", 1000), ("/s/prune", 1000)]  # fmt: skip
    assert {r.data for r in runs} == {"facts.json"} and {r.batch_size for r in runs} == {100}
    assert {r.points for r in runs} == {(100, 200, 500, 1000)}
    shorter = study_runs(_study(argparse.Namespace(**{**flags, "edits": 300}, study="scale", data="facts.json")))
    assert {(r.edits, r.points) for r in shorter} == {(300, (100, 200))}  # --edits caps every arm
    every = _study(argparse.Namespace(**{**flags, "every": 200}, study="scale", data="facts.json"))
    assert every.points == () and every.every == 200  # --every replaces the shared points

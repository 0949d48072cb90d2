"""The findings' verdicts follow their rules: by hand on made-up evidence, and end to end on a tiny model."""

from __future__ import annotations

import html
import json
import math
from dataclasses import replace

from tests.conftest import shared_data

from editscope.findings.evidence import EditEvidence, PosttrainEvidence, TaskEvidence, edit_evidence, posttrain_evidence
from editscope.findings.rules import FAILS, HOLDS, UNSURE, claim1, claim2, claim3, claim4, degrades, rose_share, trend_step


def _post(mean_rel, above=10, updated=10) -> PosttrainEvidence:
    steps = tuple(range(0, 10 * len(mean_rel), 10))
    return PosttrainEvidence("full", steps, tuple(mean_rel), tuple(0.0 for _ in mean_rel), tuple(0.0 for _ in mean_rel), updated, above)


def _edit(edited=(100.0, 101.0, 102.0), drift=0.0, resid=(0.0, -1.0, -2.0), angle=(0.0, 2.0, 4.0), editor="memit", tasks=(), efficacy=1.0):
    return EditEvidence(editor, editor, (0, 10, 20), tuple(edited), drift, tuple(resid), tuple(angle), efficacy, 5.0, tuple(tasks))


def test_rising_share_and_trend_by_hand():
    assert rose_share([1, 2, 3, 2, 5]) == 0.75 and math.isnan(rose_share([1]))
    assert trend_step(_post([0, -1e-6, 2e-6, 3e-6, 3e-6])) == 20
    assert trend_step(_post([0, 1e-6, 2e-6, 1e-6])) is None


def test_claim1_flips_with_one_number():
    assert claim1(_post([0, 1e-6, 2e-6, 3e-6])).verdict == HOLDS
    assert claim1(_post([0, 1e-6, 2e-6, 3e-6], above=8)).verdict == UNSURE  # 80% ended above: < 90%
    assert claim1(_post([0, 1e-6, 2e-6, 3e-6], above=4)).verdict == FAILS  # fewer than half
    assert claim1(_post([0, 1e-6, 0.5e-6, 3e-6])).verdict == UNSURE  # rose at 2 of 3 intervals
    assert claim1(_post([0, -1e-6, -2e-6, -3e-6])).verdict == FAILS
    assert claim1(_post([0, 0, 0], updated=0, above=0)).verdict == UNSURE


def test_claim2_needs_growth_and_still_unedited_matrices():
    assert claim2(_edit()).verdict == HOLDS
    assert claim2(_edit(drift=2e-3)).verdict == UNSURE  # an unedited matrix moved 0.2%
    assert claim2(_edit(edited=(100.0, 101.0, 100.5))).verdict == UNSURE  # rose at half the intervals
    assert claim2(_edit(edited=(100.0, 101.0, 99.0))).verdict == FAILS
    assert claim2(replace(_edit(), edited_mean=(100.0,))).verdict == UNSURE


def test_claim3_norms_down_and_angle_up():
    assert claim3(_edit()).verdict == HOLDS
    assert claim3(_edit(resid=(0.0, -1.0, 0.5))).verdict == FAILS  # ended above the unedited model
    assert claim3(_edit(angle=(0.0, 0.5, 0.5))).verdict == UNSURE  # 0.5 deg: under 1, over 0.1
    assert claim3(_edit(angle=(0.0, 0.01, 0.05))).verdict == FAILS
    assert claim3(_edit(resid=(0.0,), angle=())).verdict == UNSURE


def _task(name, start, end, n=100, chance=0.5):
    return TaskEvidence(name, start, end, n, chance)


def test_claim4_leaves_out_tasks_at_chance_and_compares_with_encore():
    assert _task("rte", 0.55, 0.4).at_chance and not _task("sst2", 0.8, 0.8).at_chance  # 0.55 is within 2 SE (0.1) of 0.5
    at_chance = [_task("rte", 0.52, 0.30), _task("mrpc", 0.48, 0.30)]
    assert degrades(_edit(tasks=at_chance)).verdict == UNSURE
    memit = _edit(tasks=[_task("sst2", 0.85, 0.60), *at_chance])
    encore = _edit(editor="encore", tasks=[_task("sst2", 0.85, 0.84), *at_chance], efficacy=0.95)
    assert degrades(memit).verdict == "degrades" and degrades(encore).verdict == "keeps"
    assert claim4([memit, encore]).verdict == HOLDS
    assert claim4([memit, replace(encore, efficacy=0.5)]).verdict == UNSURE  # ENCORE's edits stopped working
    assert claim4([memit, replace(encore, tasks=(_task("sst2", 0.85, 0.60),))]).verdict == FAILS
    assert claim4([replace(memit, tasks=(_task("sst2", 0.85, 0.84),)), encore]).verdict == FAILS  # nothing degraded
    assert claim4([memit]).verdict == UNSURE


def test_findings_quick_on_a_tiny_model(tiny_folder, tmp_path):
    """Every part runs; each verdict in findings.json is its rule applied to the recorded numbers, and
    a number changed in a run's metrics.jsonl changes the verdict."""
    from editscope.findings import FindingsConfig, run_findings
    from editscope.findings.plan import EDITORS, budget_of, posttrain_configs
    from editscope.posttrain.config import PosttrainConfig
    from editscope.report import load_runs
    from editscope.runs.store import RunStore

    locate = {"layers": [1, 2], "stats_samples": 200, "stats_seq_len": 32, "context_lengths": [], "z": {"steps": 10}}
    settings = {e: dict(locate) for e in ("memit", "emmet", "alphaedit", "encore")}
    settings["rome"] = {**locate, "layers": [1]}
    settings["emmet"]["layers"] = [2]
    settings["ft"] = {"layers": [1], "steps": 5}
    instruments = {"downstream": {"tasks": ["sst2", "cola"], "n_shots": 0}, "activations": {"n_texts": 4, "seq_len": 32},
                   "subspace": {"n_texts": 4, "seq_len": 32, "k": 4}, "perplexity": {"n_windows": 2, "seq_len": 32},
                   "edit_quality": {"generation_prompts": 2, "generation_tokens": 8}}  # fmt: skip
    config = FindingsConfig(model=str(tiny_folder), budget="quick", out=str(tmp_path / "f"), editor_settings=settings,
                            instrument_settings=instruments,
                            downstream_dir=str(shared_data("knowledge_editing_glue_eval/jsonl")), backend="inprocess", device="cpu")  # fmt: skip
    findings = run_findings(config)
    out = tmp_path / "f"
    page = (out / "findings.html").read_text()
    data = json.loads((out / "findings.json").read_text())
    assert (out / "posttrain_norms.png").stat().st_size > 5000 and (out / "report" / "report.html").is_file()
    assert set(findings.not_run) == {"mend"} and "mend train" in page
    assert {e["editor"] for e in data["edits"]} == set(EDITORS) - {"mend"}
    assert [p["mode"] for p in data["posttrain"]] == ["cpt", "full", "lora"]
    for number in (1, 2, 3, 4):
        assert f"id='claim-{number}'" in page and html.escape(data["claims"][str(number)]["rule"]) in page
    # verdicts recomputed from the folders equal the page's
    records = {m: RunStore(out / "posttrain" / m, PosttrainConfig, position="step").read_metrics() for m in ("cpt", "full", "lora")}
    for mode, recs in records.items():
        verdict = next(v for v in data["verdicts"] if v["claim"] == 1 and v["subject"] == mode)
        assert claim1(posttrain_evidence(mode, recs)).verdict == verdict["verdict"]
    runs = {r.name: r for r in load_runs([out / "edits" / e for e in ("ft", "rome", "memit", "emmet", "alphaedit", "encore")])}
    for name, run in runs.items():
        if name == "encore":
            continue
        verdict = next(v for v in data["verdicts"] if v["claim"] == 2 and v["subject"] == name)
        assert claim2(edit_evidence(run)).verdict == verdict["verdict"], name
    # downstream ability is measured at the two ends only (claim 4 reads those), the rest at every checkpoint
    memit_records = runs["memit"].records
    assert [any(k.startswith("downstream/") for k in r["metrics"]) for r in memit_records] == [True, False, True]
    assert all(any(k.startswith("ppl/") for k in r["metrics"]) for r in memit_records)
    # flip a number: MEMIT's edited norms end below their start -> claim 2 does not hold for it
    memit = out / "edits" / "memit" / "metrics.jsonl"
    lines = [json.loads(x) for x in memit.read_text().splitlines()]
    key = next(k for k in lines[-1]["metrics"] if k.endswith("/edited_fro_mean"))
    before = claim2(edit_evidence(runs["memit"])).verdict
    lines[-1]["metrics"][key] = 0.5 * lines[0]["metrics"][key]
    memit.write_text("".join(json.dumps(x) + "\n" for x in lines))
    flipped = claim2(edit_evidence(load_runs([out / "edits" / "memit"])[0])).verdict
    assert flipped == FAILS and before != FAILS
    # every post-training folder is complete: a rerun reads it back instead of training again
    for c in posttrain_configs(str(tiny_folder), budget_of("quick"), out, "cpu"):
        assert RunStore(c.out, PosttrainConfig, position="step").is_complete(c, c.steps)

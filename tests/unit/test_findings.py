"""The findings' verdicts follow their rules: by hand on made-up evidence, and end to end on a tiny model."""

from __future__ import annotations

import html
import json
import math
from dataclasses import replace

import pytest
from tests.conftest import shared_data

from editscope.config import ConfigError
from editscope.findings.evidence import EditEvidence, PosttrainEvidence, TaskEvidence, edit_evidence, posttrain_evidence
from editscope.findings.rules import FAILS, HOLDS, UNSURE, claim1, claim2, claim3, claim4, degrades, rose_share, trend_step
from editscope.precision import precision_record


def _post(mean_rel, above=10, updated=10) -> PosttrainEvidence:
    steps = tuple(range(0, 10 * len(mean_rel), 10))
    return PosttrainEvidence("full", steps, tuple(mean_rel), tuple(0.0 for _ in mean_rel), tuple(0.0 for _ in mean_rel), updated, above)


def _edit(edited=(100.0, 101.0, 102.0), drift=0.0, resid=(0.0, -1.0, -2.0), angle=(0.0, 2.0, 4.0), editor="memit", tasks=(), efficacy=1.0):
    return EditEvidence(editor, editor, (0, 10, 20), tuple(edited), drift, tuple(resid), tuple(angle), efficacy, 5.0, tuple(tasks))


def test_claim3_is_judged_layer_by_layer_where_the_mean_over_layers_says_otherwise():
    """The issue's case: one layer's rise lifts the mean over layers above zero while most layers, the last among
    them, fell: by layer the claim holds, by the mean it would not."""
    from dataclasses import replace

    layers = {4: (0.0, 1.0, 5.0), 5: (0.0, -1.0, -0.5), 6: (0.0, -2.0, -6.0)}
    mean = tuple(sum(s[i] for s in layers.values()) / 3 for i in range(3))  # (0, -0.67, -0.5): ends below 0
    mean_up = (0.0, 0.2, 1.4)
    verdict = claim3(replace(_edit(resid=mean_up), resid_by_layer=layers))
    assert verdict.verdict == HOLDS, verdict.reason
    assert "fell at 2/3 layers" in verdict.reason and "last layer (6) -6%" in verdict.reason and "mean over layers +1.4%" in verdict.reason
    assert claim3(_edit(resid=mean_up)).verdict == FAILS  # the mean alone (a run recorded without layers)
    rising = {4: (0.0, 1.0, 5.0), 5: (0.0, 1.0, 0.5), 6: (0.0, -2.0, -6.0)}
    assert claim3(replace(_edit(resid=mean), resid_by_layer=rising)).verdict == FAILS  # ended above at 2 of 3 layers
    split = {4: (0.0, 1.0, 0.0), 5: (0.0, -1.0, 0.5), 6: (0.0, -2.0, -6.0), 7: (0.0, -1.0, -1.0)}  # fell at 2 of 4, rose at 1
    assert claim3(replace(_edit(resid=mean), resid_by_layer=split)).verdict == UNSURE


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


def test_the_page_says_where_each_part_ran_and_when_the_parts_differ():
    from editscope.findings.page import _measured_on
    from editscope.findings.provenance import mixed, part_record

    xeon = {"device": "cpu", "name": "Xeon", "cpu_capability": "AVX512", "auto": "bfloat16", "torch": "2.13.0", "torch_threads": 2}
    cpt = part_record("posttrain/cpt", xeon, 600.0)
    rome = part_record("edits/rome", {**xeon, "auto": "float32", "override": "fp32", "torch_threads": 1}, 1200.0)
    assert (cpt.machine, cpt.precision, cpt.threads) == ("Xeon (AVX512)", "bfloat16", 2)
    assert (rome.precision, rome.threads) == ("float32 (EDITSCOPE_PRECISION=fp32)", 1)
    assert mixed([cpt, rome]) == ["precision"] and mixed([cpt, cpt]) == []
    page = _measured_on([cpt, rome])
    assert "differ in precision" in page and "30.0 min summed over the parts" in page and "<td>20.0</td>" in page
    assert "differ in" not in _measured_on([cpt]) and _measured_on([]) == ""
    gpu = part_record("edits/memit", {"device": "cuda", "name": "H100", "cpu_capability": "AVX512", "auto": "bfloat16", "torch": "2.13.0"}, None)
    assert gpu.machine == "H100" and mixed([cpt, gpu]) == ["machine"] and "unrecorded" in _measured_on([gpu])
    assert part_record("mend training", {}, None).machine == "unrecorded"


def test_screening_keeps_the_tasks_above_chance_and_is_saved_with_its_settings(tiny_folder, tmp_path, monkeypatch):
    from editscope.findings import screen
    from editscope.runs.config import load_run_config

    settings = {"downstream": {"data_dir": str(shared_data("knowledge_editing_glue_eval/jsonl")), "tasks": ["sst2", "rte"]}}
    config = load_run_config(None, {"model": str(tiny_folder), "instruments": ["weights", "downstream"], "instrument_config": settings,
                                    "ends_only": ["downstream"], "out": str(tmp_path / "run")})  # fmt: skip
    calls = []

    def measured(c):
        calls.append(c)
        return (_task("sst2", 0.8, math.nan), _task("rte", 0.52, math.nan))

    monkeypatch.setattr(screen, "unedited_tasks", measured)
    tasks = screen.screen_tasks(config, tmp_path)
    assert [t.at_chance for t in tasks] == [False, True] and len(calls) == 1
    again = screen.screen_tasks(config, tmp_path)
    assert [(t.task, t.acc_start, t.n_examples, t.chance) for t in again] == [(t.task, t.acc_start, t.n_examples, t.chance) for t in tasks]
    assert len(calls) == 1  # read back, not measured again
    other = load_run_config(None, {**{"model": str(tiny_folder), "instruments": ["weights", "downstream"], "out": str(tmp_path / "run")},
                                   "instrument_config": {"downstream": {**settings["downstream"], "n_examples": 50}}})  # fmt: skip
    screen.screen_tasks(other, tmp_path)
    assert len(calls) == 2  # other settings: decided again
    kept = screen.measuring_only(config, ["sst2"])
    assert kept.instrument_config["downstream"]["tasks"] == ["sst2"] and kept.instruments == config.instruments
    none = screen.measuring_only(config, [])
    assert none.instruments == ("weights",) and "downstream" not in none.instrument_config and none.ends_only == ()
    evidence = screen.with_screened(_edit(tasks=[_task("sst2", 0.8, 0.7)]), [tasks[1]])
    assert [t.task for t in evidence.tasks] == ["sst2", "rte"]
    assert " on sst2;" in degrades(evidence).reason  # the left-out task does not count


def test_edits_override_only_the_budgets_edit_count():
    from dataclasses import asdict

    from editscope.findings.plan import budget_of

    longer, standard = budget_of("standard", 100), budget_of("standard")
    assert longer.edits == 100 and {k: v for k, v in asdict(longer).items() if k != "edits"} == {k: v for k, v in asdict(standard).items() if k != "edits"}
    with pytest.raises(ConfigError, match="--edits: at least 1"):
        budget_of("standard", 0)


def test_post_training_and_mend_training_go_to_the_ray_cluster(tiny_folder, tmp_path):
    """Joining a Ray cluster, the parts the editing runs do not wait on are sweep jobs of one thread each;
    a second call finds them done and sends no post-training job again."""
    ray = pytest.importorskip("ray")
    import logging

    from editscope.editors.mend.checkpoint import read_meta
    from editscope.findings import FindingsConfig
    from editscope.findings.parts import mend_payload, posttrain_done, preparation_jobs
    from editscope.findings.plan import budget_of, edit_configs, posttrain_configs
    from editscope.findings.run import prepare
    from editscope.runs.loop import select_requests
    from editscope.runs.store import RunStore

    out, budget = tmp_path / "f", budget_of("quick")
    trainings = posttrain_configs(str(tiny_folder), budget, out, "cpu")
    edited = [r.id for r in select_requests(edit_configs(str(tiny_folder), budget, out, editors=("mend",))[0])]
    mend = mend_payload(str(tiny_folder), "demo", edited, budget.mend_steps, out, "cpu")
    assert [j.name for j in preparation_jobs(trainings, mend)] == ["mend training", "posttrain cpt", "posttrain full", "posttrain lora"]
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        address = ray.get_runtime_context().gcs_address
        prepare(FindingsConfig(model=str(tiny_folder), budget="quick", out=str(out), backend="ray", ray_address=address, device="cpu"),
                trainings, mend)  # fmt: skip
    finally:
        ray.shutdown()
    for c in trainings:
        assert posttrain_done(c), c.mode
        assert RunStore(c.out).saved_resolved()["precision"]["torch_threads"] == 1, c.mode  # in a worker, one thread
    meta = read_meta(out / "mend")
    assert meta["step"] == budget.mend_steps and meta["torch_threads"] == 1 and meta["data"]["held_out_ids"] == edited
    assert [j.name for j in preparation_jobs(trainings, mend)] == ["mend training"]  # its work reuses the finished checkpoint


def test_findings_quick_on_a_tiny_model(tiny_folder, tmp_path):
    """Every part runs; each verdict in findings.json is its rule applied to the recorded numbers, and
    a number changed in a run's metrics.jsonl changes the verdict."""
    from editscope.data.demo import load_demo
    from editscope.findings import FindingsConfig, run_findings
    from editscope.findings.hypernetwork import train_hypernetwork
    from editscope.findings.plan import EDITORS, budget_of, posttrain_configs
    from editscope.posttrain.config import PosttrainConfig
    from editscope.posttrain.loop import decay_alone
    from editscope.report import load_runs
    from editscope.runs.loop import select_requests
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
    assert findings.not_run == {} and "Not run" not in page
    assert {e["editor"] for e in data["edits"]} == set(EDITORS)
    # MEND's hypernetwork was trained for the budget's steps on the demo set without the edited requests
    mend = json.loads((out / "mend" / "mend.json").read_text())
    edited_requests = select_requests(RunStore(out / "edits" / "mend").saved_config())
    edited = [r.id for r in edited_requests]
    assert mend["step"] == budget_of("quick").mend_steps and mend["data"]["held_out_ids"] == edited
    assert mend["data"]["train"] == len(load_demo()) - len(edited) and len(edited) == budget_of("quick").edits
    assert any(v["claim"] == 2 and v["subject"] == "mend" for v in data["verdicts"])
    saved_at = (out / "mend" / "mend.json").stat().st_mtime_ns
    steps = budget_of("quick").mend_steps
    assert train_hypernetwork(str(tiny_folder), load_demo(), edited_requests, steps, out, data_name="demo") == out / "mend"
    assert (out / "mend" / "mend.json").stat().st_mtime_ns == saved_at  # reused, not trained again
    with pytest.raises(ConfigError, match="other findings"):
        train_hypernetwork(str(tiny_folder), load_demo(), edited_requests[1:], steps, out, data_name="demo")
    with pytest.raises(ConfigError, match="more than this budget"):
        train_hypernetwork(str(tiny_folder), load_demo(), edited_requests, steps - 1, out, data_name="demo")
    assert [p["mode"] for p in data["posttrain"]] == ["cpt", "full", "lora"]
    for part, c in zip(data["posttrain"], posttrain_configs(str(tiny_folder), budget_of("quick"), out), strict=True):
        assert part["decay_alone"] == [decay_alone(c)[step] for step in part["steps"]], c.mode  # cpt decays: 0.1 by default
    assert data["posttrain"][0]["decay_alone"][-1] < 0 and "of which weight decay alone" in page
    for number in (1, 2, 3, 4):
        assert f"id='claim-{number}'" in page and html.escape(data["claims"][str(number)]["rule"]) in page
    # verdicts recomputed from the folders equal the page's
    records = {m: RunStore(out / "posttrain" / m, PosttrainConfig, position="step").read_metrics() for m in ("cpt", "full", "lora")}
    for mode, recs in records.items():
        verdict = next(v for v in data["verdicts"] if v["claim"] == 1 and v["subject"] == mode)
        assert claim1(posttrain_evidence(mode, recs)).verdict == verdict["verdict"]
    runs = {r.name: r for r in load_runs([out / "edits" / e for e in EDITORS])}
    for name, run in runs.items():
        if name == "encore":
            continue
        verdict = next(v for v in data["verdicts"] if v["claim"] == 2 and v["subject"] == name)
        assert claim2(edit_evidence(run)).verdict == verdict["verdict"], name
    # the editing runs measure downstream ability only on the tasks above chance on the unedited model
    # (claim 4 reads those), and only at the two ends; the other instruments at every checkpoint
    screen = json.loads((out / "downstream_screen.json").read_text())["tasks"]
    assert {t["task"] for t in screen} == {"sst2", "cola"}
    kept = {t["task"] for t in screen if not TaskEvidence(**t).at_chance}
    assert {t.task for t in findings.screened} == {"sst2", "cola"} - kept
    memit_records = runs["memit"].records
    measured = [{k.split("/")[1] for k in r["metrics"] if k.startswith("downstream/")} for r in memit_records]
    assert measured == ([kept, set(), kept] if kept else [set(), set(), set()])
    memit_tasks = {t.task: t for t in next(e for e in findings.edits if e.editor == "memit").tasks}
    for t in findings.screened:
        assert f"{t.task} {t.acc_start:.2f} (chance" in page and math.isnan(memit_tasks[t.task].acc_end)
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
    # each part's machine, precision, threads and time as its folder recorded them; one machine here
    measured = data["measured_on"]
    assert [p["part"] for p in measured["parts"]] == ["posttrain/cpt", "posttrain/full", "posttrain/lora", "mend training",
                                                      *(f"edits/{e}" for e in EDITORS)]  # fmt: skip
    here = precision_record("cpu")
    assert measured["differ_in"] == [] and "id='measured-on'" in page and "differ in" not in page
    for part in measured["parts"]:
        assert part["machine"].startswith(here["name"]) and part["precision"].startswith(here["auto"]) and part["wall_s"] > 0
    assert measured["parts"][-1]["wall_s"] == runs[EDITORS[-1]].records[-1]["wall_s"]
    assert measured["parts"][3]["wall_s"] == mend["wall_s"]
    # every post-training folder is complete: a rerun reads it back instead of training again
    for c in posttrain_configs(str(tiny_folder), budget_of("quick"), out, "cpu"):
        assert RunStore(c.out, PosttrainConfig, position="step").is_complete(c, c.steps)


def test_scale_budget_judges_claims_2_to_4_beside_an_earlier_budgets_verdicts(tiny_folder, tmp_path):
    """``scale`` runs no post-training (claim 1 is listed as not run), checkpoints at its points, judges claim 3 per
    layer (a table of every layer read), and sets each verdict beside the ``--against`` folder's on the same subject."""
    from editscope.findings import FindingsConfig, run_findings
    from editscope.findings.plan import budget_of

    scale = budget_of("scale")
    assert not scale.posttrain and scale.batch_size == 100 and scale.edits >= 1000 and "rome" not in scale.editors
    earlier = tmp_path / "standard"
    earlier.mkdir()
    verdicts = [{"claim": 2, "subject": "memit", "verdict": HOLDS, "reason": "by hand"},
                {"claim": 3, "subject": "memit", "verdict": "made-up verdict", "reason": "by hand"}]  # fmt: skip
    (earlier / "findings.json").write_text(json.dumps({"budget": "standard", "edits": [{"name": "memit", "edits": [0, 50]}], "verdicts": verdicts}))
    locate = {"layers": [1, 2], "stats_samples": 200, "stats_seq_len": 32, "context_lengths": [], "z": {"steps": 10}}
    instruments = {"activations": {"n_texts": 4, "seq_len": 32}, "subspace": {"n_texts": 4, "seq_len": 32, "k": 4},
                   "perplexity": {"n_windows": 2, "seq_len": 32}, "edit_quality": {"generation_prompts": 0}}  # fmt: skip
    out = tmp_path / "scale"
    with pytest.raises(ConfigError, match="no findings.json"):
        run_findings(FindingsConfig(model=str(tiny_folder), budget="scale", edits=12, out=str(out), editors=("memit",),
                                    against=str(tmp_path / "nowhere"), backend="inprocess", device="cpu"))  # fmt: skip
    assert not out.exists()
    findings = run_findings(FindingsConfig(model=str(tiny_folder), budget="scale", edits=12, out=str(out), editors=("memit",),
                                           editor_settings={"memit": locate}, instrument_settings=instruments,
                                           against=str(earlier), backend="inprocess", device="cpu"))  # fmt: skip
    data = json.loads((out / "findings.json").read_text())
    page = (out / "findings.html").read_text()
    assert not (out / "posttrain").exists() and "post-training (claim 1)" in findings.not_run
    assert not [v for v in findings.verdicts if v.claim == 1]
    memit = next(e for e in findings.edits if e.editor == "memit")
    assert memit.edits == (0, 12) and sorted(memit.resid_by_layer) == list(range(1, 4))  # every layer from the first edited
    assert "Residual-stream norm change" in page and "<th>3</th>" in page
    rows = {(r["claim"], r["subject"]): r for r in data["against"]["verdicts"]}
    here2 = next(v for v in findings.verdicts if v.claim == 2 and v.subject == "memit")
    assert rows[(2, "memit")]["changed"] == (here2.verdict != HOLDS) and rows[(2, "memit")]["edits_before"] == 50
    assert rows[(3, "memit")]["changed"] and rows[(3, "memit")]["verdict_before"] == "made-up verdict"
    assert rows[(2, "memit")]["edits_here"] == 12 and "made-up verdict" in page and "verdict there" in page


def test_an_edit_set_smaller_than_the_budget_fails_before_anything_runs(tiny_folder, tmp_path):
    """``full`` edits 10,000 facts: on the 548 of the demo set it stops at once, naming the numbers, with nothing written."""
    from editscope.findings import FindingsConfig, run_findings

    with pytest.raises(ConfigError, match="fewer than the 10000 edits"):
        run_findings(FindingsConfig(model=str(tiny_folder), budget="full", out=str(tmp_path / "f"), backend="inprocess", device="cpu"))
    assert not (tmp_path / "f").exists()


def test_mend_trains_on_the_edit_set_without_the_edited_requests():
    from editscope.data.demo import load_demo
    from editscope.findings.hypernetwork import training_split

    requests = load_demo()
    edited = [requests[7], requests[3]]
    train, held_out = training_split(requests, edited)
    assert held_out == edited and len(train) == len(requests) - 2 and not {r.id for r in train} & {r.id for r in edited}
    with pytest.raises(ConfigError, match="no request left to train MEND"):
        training_split(edited, edited)

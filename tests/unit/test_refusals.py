"""Every refusal of the CLI is one ``editscope: error:`` line, exit status 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from editscope.cli import main


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


CASES = {
    "run: model folder missing": ["run", "--model", "/nonexistent/model", "--editor", "memit", "--data", "demo", "--edits", "5", "--out", "{out}"],
    "run: layer the model lacks": ["run", "--model", "{tiny}", "--editor", "memit", "--data", "demo", "--edits", "5", "--hp", "layers=[99]", "--out", "{out}"],
    "run: unknown hyperparameter": ["run", "--model", "{tiny}", "--editor", "memit", "--data", "demo", "--edits", "5", "--hp", "lamda=3", "--out", "{out}"],
    "run: unknown editor": ["run", "--model", "{tiny}", "--editor", "memt", "--data", "demo", "--edits", "5", "--out", "{out}"],
    "run: data file missing": ["run", "--model", "{tiny}", "--editor", "memit", "--data", "/nonexistent.json", "--edits", "5", "--out", "{out}"],
    "run: more edits than data": ["run", "--model", "{tiny}", "--editor", "memit", "--data", "demo", "--edits", "100000", "--out", "{out}"],
    "run: resume of nothing": ["run", "--resume", "{out}"],
    "run: data is a folder": ["run", "--model", "{tiny}", "--editor", "memit", "--data", "{empty}", "--edits", "5", "--out", "{out}"],
    "run: model of an unknown architecture": ["run", "--model", "{alien}", "--editor", "memit", "--data", "demo", "--edits", "5", "--out", "{out}"],
    "run: jsonl record with an unknown key": ["run", "--model", "{tiny}", "--editor", "memit", "--data", "{bad_jsonl}", "--edits", "1", "--out", "{out}"],
    "export: not a run folder": ["export", "{empty}", "--out", "{out}"],
    "predict: run checkpoint not kept": ["predict", "--model", "{fake_run}@7"],
    "posttrain: model folder missing": ["posttrain", "--mode", "full", "--model", "/nonexistent/model", "--steps", "2", "--out", "{out}"],
    "posttrain: data file missing": ["posttrain", "--mode", "full", "--model", "{tiny}", "--data", "/nonexistent.json", "--steps", "2", "--out", "{out}"],
    "posttrain: zero steps": ["posttrain", "--mode", "full", "--model", "{tiny}", "--steps", "0", "--out", "{out}"],
    "mend train: model folder missing": ["mend", "train", "--model", "/nonexistent/model", "--steps", "2", "--out", "{out}"],
    "mend train: bad setting": ["mend", "train", "--model", "{tiny}", "--steps", "2", "--set", "rank=-1", "--out", "{out}"],
    "mend train: unknown setting": ["mend", "train", "--model", "{tiny}", "--steps", "2", "--set", "rnak=4", "--out", "{out}"],
    "mend train: layer the model lacks": ["mend", "train", "--model", "{tiny}", "--steps", "2", "--set", "layers=[99]", "--out", "{out}"],
    "sweep: file missing": ["sweep", "{out}.yaml"],
    "sweep: unknown key": ["sweep", "{bad_sweep}"],
    "diff: checkpoint missing": ["diff", "{tiny}", "/nonexistent/model"],
    "report: not a run folder": ["report", "{empty}", "--out", "{out}"],
    "report: unknown figure": ["report", "{empty}", "--out", "{out}", "--figures", "nosuch"],
}
SAYS = {  # what the line must tell, where the case is about the message
    "run: data is a folder": "is a folder, not an edit-set file",
    "run: model of an unknown architecture": "config.json: transformers cannot read it",
    "run: jsonl record with an unknown key": "'paraphrase_prompt': unknown key (did you mean 'paraphrase_prompts'?); the jsonl format's keys: id, prompt",
    "predict: run checkpoint not kept": "no delta kept at 7 edits",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refusal_is_one_line_status_2_and_writes_nothing(case, tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    work.mkdir()
    (work / "empty").mkdir()
    (work / "bad_sweep.yaml").write_text("base: {model: x}\ngrid: {}\nroot: r\nnosuch: 1\n")
    (work / "alien").mkdir()
    (work / "alien" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    (work / "bad.jsonl").write_text('{"prompt": "{} is in", "subject": "X", "target_new": "A", "target_true": "B", "paraphrase_prompt": ["x"]}\n')
    (work / "run" / "state").mkdir(parents=True)  # a run folder saved at 10 edits, no checkpoint deltas kept
    (work / "run" / "config.yaml").write_text(f"model: {tiny_folder}\neditor: memit\nedits: 10\n")
    (work / "run" / "state" / "state.json").write_text('{"progress": {"edits": 10}, "editor": {}, "instruments": {}}')
    names = {"tiny": str(tiny_folder), "out": str(work / "out"), "empty": str(work / "empty"), "bad_sweep": str(work / "bad_sweep.yaml"),
             "alien": str(work / "alien"), "bad_jsonl": str(work / "bad.jsonl"), "fake_run": str(work / "run")}  # fmt: skip
    argv = [a.format(**names) for a in CASES[case]]
    before = _tree(work)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("editscope: error: "), (case, err)
    assert SAYS.get(case, "") in err[0], (case, err)
    assert _tree(work) == before, (case, _tree(work) - before)

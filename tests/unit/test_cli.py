import copy
import json
import logging

from tests.conftest import shared_data

from editscope.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_json_lists_bundled_and_architectures(capsys):
    code, out, _ = run(capsys, "models", "--json")
    payload = json.loads(out)
    assert code == 0
    assert "smollm2-135m" in [b["name"] for b in payload["bundled"]]
    assert {"llama", "gemma3", "gpt2", "gptj", "gpt_neox"} <= {a["name"] for a in payload["architectures"]}


def test_data_inspect_counterfact_json(capsys):
    code, out, _ = run(capsys, "data", "inspect", str(shared_data("counterfact/counterfact_500.json")), "--json")
    payload = json.loads(out)
    assert code == 0
    assert (payload["format"], payload["count"], payload["errors"]) == ("counterfact", 500, [])


def test_data_inspect_reports_broken_record_and_fails(capsys, tmp_path):
    records = json.loads(shared_data("counterfact/counterfact_500.json").read_text())
    broken = copy.deepcopy(records)
    broken[42]["requested_rewrite"]["prompt"] = broken[42]["requested_rewrite"]["prompt"].replace("{}", "")
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(broken))
    code, out, _ = run(capsys, "data", "inspect", str(path), "--json")
    payload = json.loads(out)
    assert code != 0
    assert [(e["index"], e["field"]) for e in payload["errors"]] == [(42, "requested_rewrite.prompt")]
    code, out, _ = run(capsys, "data", "inspect", str(path))
    assert code != 0 and "record 42" in out


def test_data_inspect_demo(capsys):
    code, out, _ = run(capsys, "data", "inspect", "demo", "--json", "--limit", "1")
    payload = json.loads(out)
    assert code == 0 and payload["format"] == "demo" and payload["count"] >= 300
    assert len(payload["first"]) == 1


def test_missing_file_is_an_error_with_exit_code(capsys, tmp_path):
    code, out, _ = run(capsys, "data", "inspect", str(tmp_path / "nope.json"), "--json")
    assert code != 0 and "file not found" in out


def test_editors_json_lists_every_method(capsys):
    code, out, _ = run(capsys, "editors", "--json")
    listing = {e["name"]: e for e in json.loads(out)}
    assert code == 0
    assert {"ft", "ft-l", "lora", "rome", "memit", "emmet", "alphaedit", "encore"} <= set(listing)
    assert listing["memit"]["defaults"]["mom2_update_weight"] > 0
    assert "smollm2-135m" in listing["memit"]["shipped_for"]


def test_progress_logs_a_line_per_batch_where_stderr_is_not_a_terminal(caplog):
    from editscope.cli.output import progress_bar

    update = progress_bar(20, "memit")  # pytest captures stderr: no terminal, so the bar is off
    with caplog.at_level(logging.INFO, logger="editscope.cli.output"):
        update(10, 20, {"edit/efficacy": 0.95, "weight/x": 1.0})
        update(20, 20, {})
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("memit: 10/20 edits, ") and lines[0].endswith("efficacy 0.95 (last checkpoint)")
    assert lines[1].startswith("memit: 20/20 edits, ")

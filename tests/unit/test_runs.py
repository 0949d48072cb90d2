"""Sequential runs on a tiny model: schedule, run folder, resume (in-process and after SIGKILL), bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import kill_repeatedly, shared_data

from editscope.config import ConfigError, to_dict
from editscope.runs import RunConfig, RunStore, execute, load_run_config, read_metrics_file
from editscope.runs.schedule import batch_ends, checkpoints
from editscope.sweep.task import torch_threads

TINY_MEMIT = {
    "layers": [1, 2], "context_lengths": [], "stats_samples": 200, "stats_seq_len": 32,
    "z": {"steps": 20}, "mom2_update_weight": 10.0,
}
FAST_INSTRUMENTS = {
    "activations": {"n_texts": 4, "seq_len": 32},
    "subspace": {"n_texts": 4, "seq_len": 32, "k": 4},
    "edit_quality": {"retention_sample": 10, "generation_prompts": 2, "generation_tokens": 8},
}


def tiny_config(folder: Path, out: Path, **overrides) -> RunConfig:
    data = {
        "model": str(folder), "editor": "memit", "editor_config": TINY_MEMIT, "edits": 20, "batch_size": 5, "every": 10,
        "instruments": ["weights", "activations", "subspace", "edit_quality"], "instrument_config": FAST_INSTRUMENTS,
        "out": str(out),
    }
    data.update(overrides)
    return load_run_config(None, data)


# -- schedule ----------------------------------------------------------------------------------
def test_checkpoints_fall_on_batch_ends():
    assert batch_ends(23, 5) == [5, 10, 15, 20, 23]
    assert checkpoints(23, 5, every=10) == [0, 10, 20, 23]
    assert checkpoints(100, 10, every=30) == [0, 30, 60, 90, 100]
    assert checkpoints(100, 7, every=30) == [0, 35, 63, 91, 100]  # rounded up to the next batch end
    log = checkpoints(1000, 10, every=1, log_points=4)
    assert log == [0, 10, 50, 220, 1000]
    assert all(p % 10 == 0 for p in log)
    # explicit points (the scale study's), shared by runs of different lengths; rounded up to batch ends
    assert checkpoints(2000, 100, every=100, at=(100, 200, 500, 1000)) == [0, 100, 200, 500, 1000, 2000]
    assert checkpoints(1000, 100, every=100, at=(100, 200, 500, 1000, 2000)) == [0, 100, 200, 500, 1000]
    assert checkpoints(1000, 300, every=100, at=(100, 500)) == [0, 300, 600, 1000]


def test_points_are_part_of_the_digest_only_when_set(tmp_path):
    plain = load_run_config(None, {"edits": 30, "batch_size": 10, "out": str(tmp_path / "a")})
    assert plain.digest() == load_run_config(None, {"edits": 30, "batch_size": 10, "points": [], "out": str(tmp_path / "b")}).digest()
    assert plain.digest() != load_run_config(None, {"edits": 30, "batch_size": 10, "points": [10], "out": str(tmp_path / "c")}).digest()
    for bad in ([20, 10], [0, 10], [10, 10]):
        with pytest.raises(ConfigError, match="run.points"):
            load_run_config(None, {"edits": 30, "points": bad})


# -- a run and its folder ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "memit"
    config = tiny_config(tiny_folder, out)
    with torch_threads(1):  # the resume tests compare against it bit for bit
        return config, execute(config)


def test_run_folder_follows_the_contract(finished_run):
    config, summary = finished_run
    folder = Path(config.out)
    records = read_metrics_file(folder / "metrics.jsonl")
    assert [r["edits"] for r in records] == [0, 10, 20]
    assert set(records[0]) == {"edits", "wall_s", "metrics"}
    assert all(set(r) == {"edits", "wall_s", "metrics", "batch_s"} for r in records[1:])
    # each batch's seconds since the last checkpoint (two batches of 5 per 10 edits), summing to the edit time
    for r in records[1:]:
        assert len(r["batch_s"]) == 2 and all(s > 0 for s in r["batch_s"])
        assert sum(r["batch_s"]) == pytest.approx(r["metrics"]["time/edit_s"], abs=0.01)
        assert r["metrics"]["mem/peak_rss_mb"] >= r["metrics"]["mem/rss_mb"] > 50
    first, last = records[0]["metrics"], records[-1]["metrics"]
    edited = "model.layers.1.mlp.down_proj.weight"
    unedited = "model.layers.3.mlp.down_proj.weight"
    assert first[f"weight/{edited}/delta_fro"] == 0.0
    assert last[f"weight/{edited}/delta_fro"] > 0
    assert last[f"weight/{unedited}/delta_fro"] == 0.0
    assert "edit/efficacy" not in first and "edit/entropy" in first  # nothing edited yet; fluency measured
    assert 0.0 <= last["edit/efficacy"] <= 1.0 and last["edit/retention_n"] == 10.0
    assert first["subspace/layers.2.resid/cka"] == pytest.approx(1.0)
    saved = yaml_load(folder / "config.yaml")
    assert saved["digest"] == config.digest()
    assert saved["resolved"]["editor"]["mom2_update_weight"] == 10.0
    assert saved["resolved"]["editor"]["z"]["lr"] > 0  # shipped/class defaults recorded too
    stats = saved["resolved"]["corpora"]["editor.stats_corpus"]  # the corpus C0 came from, resolved
    assert stats["resolved"] == "bundled:wiki" and stats["kind"] == "bundled" and len(stats["fingerprint"]) == 16
    assert saved["resolved"]["corpora"]["instruments.activations.corpus"]["fingerprint"] == stats["fingerprint"]
    deltas = load_file(str(folder / "state" / "deltas.safetensors"))
    assert sorted(deltas) == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    assert torch.linalg.vector_norm(deltas[edited]).item() == pytest.approx(last[f"weight/{edited}/delta_fro"], rel=1e-5)
    state = json.loads((folder / "state" / "state.json").read_text())
    assert state["progress"]["edits"] == 20


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_interrupted_run_resumes_bit_identically(finished_run, tiny_folder, tmp_path, one_thread):
    config, reference = finished_run
    out = tmp_path / "interrupted"
    interrupted = tiny_config(tiny_folder, out, every=5)
    reference_5 = execute(tiny_config(tiny_folder, tmp_path / "every5", every=5))

    def stop_after_second_batch(done, total, metrics):
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(interrupted, progress=stop_after_second_batch)
    assert [r["edits"] for r in read_metrics_file(out / "metrics.jsonl")] == [0, 5, 10]
    resumed = execute(interrupted, resume=True)
    assert resumed.weights_sha256 == reference_5.weights_sha256 == reference.weights_sha256
    assert [r["edits"] for r in read_metrics_file(out / "metrics.jsonl")] == [0, 5, 10, 15, 20]
    again = execute(interrupted)  # same config, finished: nothing to do, nothing duplicated
    assert again.weights_sha256 == reference.weights_sha256
    assert [r["edits"] for r in read_metrics_file(out / "metrics.jsonl")] == [0, 5, 10, 15, 20]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigkill_at_random_points_resumes_bit_identically(tiny_folder, tmp_path, one_thread):
    """Kill the CLI three times at random moments after it made progress; the resumed run ends as an uninterrupted one."""
    import yaml

    config = tiny_config(tiny_folder, tmp_path / "killed", edits=40, every=5)
    reference = execute(tiny_config(tiny_folder, tmp_path / "reference", edits=40, every=5))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_plain(config)))
    cmd = [sys.executable, "-m", "editscope", "run", "--config", str(tmp_path / "run.yaml")]
    metrics = Path(config.out) / "metrics.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = kill_repeatedly(lambda _: cmd, lambda: _lines(metrics), kills=3, seed=1234, env=env)
    assert kills == 3, "the run finished before it could be killed three times"
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["edits"] for line in lines] == list(range(0, 45, 5))
    final = load_file(str(Path(config.out) / "state" / "deltas.safetensors"))
    expected = load_file(str(Path(reference.folder) / "state" / "deltas.safetensors"))
    assert sorted(final) == sorted(expected)
    for name in final:
        assert torch.equal(final[name], expected[name]), name


# -- bad input ---------------------------------------------------------------------------------
def test_unknown_keys_get_did_you_mean(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="batch_sise.*did you mean 'batch_size'"):
        load_run_config(None, {"batch_sise": 3})
    with pytest.raises(ConfigError, match="did you mean"):
        tiny_config(tiny_folder, tmp_path / "x", editor_config={**TINY_MEMIT, "mom2_update_wieght": 1.0})
    with pytest.raises(ConfigError, match="n_txts.*did you mean 'n_texts'"):
        tiny_config(tiny_folder, tmp_path / "x", instrument_config={"activations": {"n_txts": 3}})
    with pytest.raises(Exception, match="did you mean 'memit'"):
        tiny_config(tiny_folder, tmp_path / "x", editor="memt")
    with pytest.raises(Exception, match="did you mean 'weights'"):
        tiny_config(tiny_folder, tmp_path / "x", instruments=["weight"])


def test_bad_runs_fail_before_the_model_loads(tmp_path):
    missing_model = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="548 usable requests, fewer than the 600 edits"):
        execute(load_run_config(None, {"model": missing_model, "edits": 600, "out": str(tmp_path / "a")}))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(ConfigError, match="not writable"):
            execute(load_run_config(None, {"model": missing_model, "out": str(locked / "run")}))
    finally:
        locked.chmod(0o700)


def test_not_writable_output_is_refused_even_as_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="not writable"):
        execute(load_run_config(None, {"model": str(tmp_path / "nope"), "out": str(blocker / "run")}))


def test_folder_with_another_config_is_refused(finished_run, tmp_path):
    config, _ = finished_run
    other = load_run_config(None, {**_plain(config), "seed": 1})
    with pytest.raises(ConfigError, match="different config.*seed"):
        RunStore(config.out).begin(other, resume=False, overwrite=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a run folder"):
        RunStore(stray).begin(other, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="nothing|no run to resume"):
        RunStore(tmp_path / "empty").begin(other, resume=True, overwrite=False)


def _plain(config: RunConfig) -> dict:
    from editscope.config import to_dict

    return to_dict(config)


def test_torn_metrics_line_is_skipped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"edits": 0, "wall_s": 1.0, "metrics": {"a": 1}}\n{"edits": 10, "wall_s": 2.0, "met')
    with caplog.at_level("WARNING"):
        records = read_metrics_file(path)
    assert [r["edits"] for r in records] == [0]
    assert "torn" in caplog.text


def test_cli_run_and_resume_flags(finished_run, capsys):
    from editscope.cli import main

    config, _ = finished_run
    assert main(["run", "--resume", config.out, "--edits", "5"]) == 2
    assert "drop edits" in capsys.readouterr().err
    assert main(["run", "--resume", config.out]) == 0
    assert "20 edits" in capsys.readouterr().out


def test_wall_time_grows(finished_run):
    config, _ = finished_run
    records = read_metrics_file(Path(config.out) / "metrics.jsonl")
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls) and walls[0] > 0


def test_downstream_step_zero_comes_from_the_baseline(tiny_folder, tmp_path):
    data_dir = shared_data("knowledge_editing_glue_eval/jsonl")
    config = tiny_config(
        tiny_folder, tmp_path / "down", edits=5, every=5, instruments=["downstream", "perplexity"],
        instrument_config={"downstream": {"data_dir": str(data_dir), "tasks": ["cola"], "n_examples": 8, "n_shots": 1},
                           "perplexity": {"n_windows": 2, "seq_len": 32}},
    )
    execute(config)
    first, last = read_metrics_file(tmp_path / "down" / "metrics.jsonl")
    assert first["metrics"]["downstream/cola/agree"] == 1.0
    assert first["metrics"]["time/downstream_s"] < 0.01  # the baseline's predictions, not a second pass
    assert set(k for k in last["metrics"] if k.startswith("downstream/")) == set(k for k in first["metrics"] if k.startswith("downstream/"))
    assert first["metrics"]["ppl/default"] > 1.0


def test_ends_only_instruments_skip_the_middle_checkpoints(tiny_folder, tmp_path):
    data_dir = shared_data("knowledge_editing_glue_eval/jsonl")
    settings = {"downstream": {"data_dir": str(data_dir), "tasks": ["cola"], "n_examples": 8, "n_shots": 0},
                "perplexity": {"n_windows": 2, "seq_len": 32}}  # fmt: skip
    config = tiny_config(tiny_folder, tmp_path / "ends", edits=10, every=5, instruments=["downstream", "perplexity"],
                         instrument_config=settings, ends_only=["downstream"])  # fmt: skip
    execute(config)
    records = read_metrics_file(tmp_path / "ends" / "metrics.jsonl")
    assert [r["edits"] for r in records] == [0, 5, 10]
    has_downstream = ["downstream/cola/acc" in r["metrics"] for r in records]
    assert has_downstream == [True, False, True]
    assert all("ppl/default" in r["metrics"] for r in records)
    # an empty ends_only leaves the digest of run folders made before the field existed unchanged
    plain = tiny_config(tiny_folder, tmp_path / "plain")
    data = {k: v for k, v in to_dict(plain).items() if k not in ("out", "device_map", "keep_deltas", "ends_only", "points")}
    assert plain.digest() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert config.digest() != tiny_config(tiny_folder, tmp_path / "x", edits=10, every=5, instruments=["downstream", "perplexity"],
                                          instrument_config=settings).digest()  # fmt: skip
    with pytest.raises(ConfigError, match="run.ends_only: subspace not among"):
        tiny_config(tiny_folder, tmp_path / "y", ends_only=["subspace"], instruments=["weights"], instrument_config={})


def test_cli_compare(finished_run, capsys, tmp_path):
    from editscope.cli import main

    config, _ = finished_run
    assert main(["compare", config.out, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["run"] == "memit" and rows[0]["edits"] == 20 and rows[0]["edited_fro_growth_pct"] > 0
    assert main(["compare", config.out]) == 0
    assert "edited ||W|| growth %" in capsys.readouterr().out
    assert main(["compare", str(tmp_path)]) == 2
    # any checkpoint, not only the last: the run as it stood at 10 edits
    assert main(["compare", config.out, "--at", "10", "--json"]) == 0
    at10 = json.loads(capsys.readouterr().out)[0]
    assert at10["edits"] == 10 and 0 < at10["edited_fro_growth_pct"] < rows[0]["edited_fro_growth_pct"]
    assert main(["compare", config.out, "--at", "15"]) == 2
    assert "no checkpoint at 15 edits; its checkpoints: 0, 10, 20" in capsys.readouterr().err


def test_side_by_side_runs_equal_runs_one_after_another(finished_run, tiny_folder, tmp_path):
    from editscope.runs.study import run_side_by_side

    config, reference = finished_run
    twins = [tiny_config(tiny_folder, tmp_path / name, seed=0) for name in ("a", "b")]
    results = run_side_by_side(twins, jobs=2)
    assert [r["edits"] for r in results] == [20, 20]
    for twin in twins:
        assert [r["edits"] for r in read_metrics_file(Path(twin.out) / "metrics.jsonl")] == [0, 10, 20]
    # The workers split the cores; with one thread each their sums may differ in the last bits from
    # the 2-thread reference, so compare values, not bits.
    expected = load_file(str(Path(config.out) / "state" / "deltas.safetensors"))
    for twin in twins:
        got = load_file(str(Path(twin.out) / "state" / "deltas.safetensors"))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-4)


def test_a_moved_run_folder_resumes_in_place(tiny_folder, tmp_path):
    import shutil

    from editscope.cli import main

    original = tmp_path / "original"

    def stop(done, total, metrics):
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(tiny_config(tiny_folder, original, every=5), progress=stop)
    moved = tmp_path / "moved"
    shutil.move(original, moved)
    assert main(["run", "--resume", str(moved)]) == 0
    assert [r["edits"] for r in read_metrics_file(moved / "metrics.jsonl")] == [0, 5, 10, 15, 20]
    assert not original.exists()

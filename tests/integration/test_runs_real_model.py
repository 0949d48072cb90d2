"""A short sequential MEMIT run on the bundled model: the edited matrices grow, the others stay put."""

from __future__ import annotations

from editscope.runs import execute, load_run_config, read_metrics_file


def test_memit_run_grows_edited_norms_only(tmp_path):
    config = load_run_config(None, {
        "model": "smollm2-135m", "editor": "memit", "edits": 20, "batch_size": 10, "every": 10,
        "instruments": ["weights", "edit_quality"],
        "instrument_config": {"edit_quality": {"generation_prompts": 2, "generation_tokens": 10}},
        "editor_config": {"stats_samples": 300}, "out": str(tmp_path / "memit"),
    })
    summary = execute(config)
    records = read_metrics_file(tmp_path / "memit" / "metrics.jsonl")
    assert [r["edits"] for r in records] == [0, 10, 20]
    edited = [r["metrics"]["weight/mlp_out/edited_fro_mean"] for r in records]
    assert edited[0] < edited[1] < edited[2]  # finding 2: every batch grows the edited matrices
    last = records[-1]["metrics"]
    assert last["weight/mlp_out/unedited_max_rel_change"] == 0.0  # unedited layers untouched
    assert last["edit/efficacy"] >= 0.8
    assert last["edit/neighborhood"] >= 0.7
    assert summary.weights_sha256

"""The edited model leaves its run folder: exports at two checkpoints read by transformers alone, a delta patch
equal to the export bit for bit and refused on another base, and run folders taken wherever a model is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from editscope.cli import main
from editscope.config import ConfigError
from editscope.models import load
from editscope.runs import execute, load_run_config, read_metrics_file
from editscope.runs.export import RunRef, apply_patch, export_run, parse_run_ref

TINY_MEMIT = {"layers": [1, 2], "context_lengths": [], "stats_samples": 200, "stats_seq_len": 32, "z": {"steps": 20}, "mom2_update_weight": 10.0}
PROMPTS = ["The Eiffel Tower is located in", "Danielle Darrieux speaks"]


@pytest.fixture(scope="module")
def run(tiny_folder, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("export") / "memit"
    config = load_run_config(None, {"model": str(tiny_folder), "editor": "memit", "editor_config": TINY_MEMIT, "edits": 20,
                                    "batch_size": 5, "every": 10, "instruments": ["weights"], "out": str(out)})  # fmt: skip
    return out, execute(config)


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_exports_at_two_checkpoints_load_with_transformers_alone_and_match_the_run(run, tiny_folder, tmp_path):
    folder, summary = run
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["10.safetensors", "20.safetensors"]
    base = load(str(tiny_folder))
    exported = {}
    for edits in (10, 20):
        out = export_run(RunRef(folder, edits), tmp_path / f"at{edits}")
        assert {"config.json", "model.safetensors", "README.md", "generation_config.json"} <= {p.name for p in out.iterdir()}
        hf = AutoModelForCausalLM.from_pretrained(out)  # transformers alone, no editscope in the way
        tok = AutoTokenizer.from_pretrained(out)
        tok.pad_token = tok.pad_token or tok.eos_token
        ours = load(f"{folder}@{edits}")  # the run's model at that checkpoint: W0 + C as the run added it
        assert torch.equal(_logits(hf, tok), _logits(ours.model, ours.tokenizer)), edits
        weights = load_file(str(out / "model.safetensors"))
        kept = load_file(str(folder / "checkpoints" / f"{edits}.safetensors"))
        for name, delta in kept.items():
            assert torch.equal(weights[name], base.model.get_parameter(name) + delta), (edits, name)
        card = (out / "README.md").read_text()
        assert f"after {edits} sequential memit edits" in card and "fingerprint" in card and "mom2_update_weight: 10.0" in card
        exported[edits] = weights
    edited = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(exported[10][edited], exported[20][edited])
    assert torch.equal(exported[10]["model.layers.3.mlp.down_proj.weight"], base.model.get_parameter("model.layers.3.mlp.down_proj.weight"))
    # the latest checkpoint is the run's final model, bit for bit
    from editscope.runs.loop import weights_digest

    latest = load(str(folder))
    assert weights_digest(latest.model, sorted(kept)) == summary.weights_sha256
    assert torch.equal(_logits(latest.model, latest.tokenizer), _logits(load(f"{folder}@20").model, latest.tokenizer))


def test_a_patch_applied_to_its_base_is_the_export_bit_for_bit_and_another_base_is_refused(run, tiny_folder, tmp_path):
    from editscope.models.tiny import tiny_model

    folder, _ = run
    export = export_run(RunRef(folder, 20), tmp_path / "full")
    patch = export_run(RunRef(folder, 20), tmp_path / "patch", delta_only=True)
    assert patch.name == "delta.safetensors" and sorted(load_file(str(patch))) == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    applied = apply_patch(str(tiny_folder), patch, tmp_path / "applied")
    a, b = load_file(str(applied / "model.safetensors")), load_file(str(export / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    other_model, other_tok, _ = tiny_model("llama", seed=1)  # same architecture, other weights
    other = tmp_path / "other"
    other_model.save_pretrained(other)
    other_tok.save_pretrained(other)
    with pytest.raises(ConfigError, match="refusing to apply it to another model"):
        apply_patch(str(other), patch, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    assert main(["apply", str(other), str(patch.parent), "--out", str(tmp_path / "refused")]) == 2
    with pytest.raises(ConfigError, match="not an editscope delta patch"):
        apply_patch(str(tiny_folder), export / "model.safetensors", tmp_path / "refused")


def test_run_folders_are_models_for_predict_diff_and_run(run, tiny_folder, tmp_path, capsys):
    folder, _ = run
    assert parse_run_ref(f"{folder}@10") == RunRef(folder, 10) and parse_run_ref(str(tiny_folder)) is None
    assert main(["predict", "--model", str(folder), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "edited requests, unedited -> edited" in out and "A neighbor of each" in out
    assert main(["predict", "--model", f"{folder}@10", "--prompt", "The capital of France is", "--tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("next: ") == 2 and "unedited: The capital of France is" in out and "edited: " in out
    assert main(["diff", str(tiny_folder), f"{folder}@10", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    changed = {r["name"] for r in rows["matrices"] if r["relative"] > 0}
    assert changed and all(".mlp.down_proj." in name for name in changed)
    # a run on the edited model: its unedited state is the first run's model at 10 edits
    second = load_run_config(None, {"model": f"{folder}@10", "editor": "memit", "editor_config": TINY_MEMIT, "edits": 5,
                                    "batch_size": 5, "every": 5, "instruments": ["weights"], "out": str(tmp_path / "second")})  # fmt: skip
    execute(second)
    start = read_metrics_file(tmp_path / "second" / "metrics.jsonl")[0]["metrics"]
    at10 = load(f"{folder}@10").model.get_parameter("model.layers.1.mlp.down_proj.weight")
    assert start["weight/model.layers.1.mlp.down_proj.weight/fro"] == pytest.approx(float(at10.norm()), rel=1e-6)
    with pytest.raises(ConfigError, match="no delta kept at 15 edits"):
        load(f"{folder}@15")

"""``editscope diff``: exact zero against itself, streamed block reads, sharded folders, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from editscope.cli import main
from editscope.diff import CheckpointError, diff_checkpoints, matrix_kind, open_source, summarize_kinds
from editscope.diff import sources as sources_module
from editscope.models import tiny_model


@pytest.fixture(scope="module")
def shifted(tmp_path_factory, tiny_folder):
    """The tiny llama with known changes, saved in several shards."""
    model, tokenizer, _ = tiny_model("llama")
    changes = {"model.layers.1.mlp.down_proj.weight": 0.5, "model.layers.2.self_attn.q_proj.weight": -0.25}
    with torch.no_grad():
        for name, scale in changes.items():
            model.get_parameter(name).mul_(1 + scale)
    folder = tmp_path_factory.mktemp("shifted")
    model.save_pretrained(folder, max_shard_size="40KB")
    tokenizer.save_pretrained(folder)
    return folder, changes


def test_kind_and_layer_from_names():
    assert matrix_kind("model.layers.4.mlp.down_proj.weight") == ("mlp.down_proj", 4)
    assert matrix_kind("transformer.h.11.attn.c_proj.weight") == ("attn.c_proj", 11)
    assert matrix_kind("model.embed_tokens.weight") == ("model.embed_tokens", None)


def test_checkpoint_against_itself_is_exactly_zero(tiny_folder):
    rows = diff_checkpoints(open_source(str(tiny_folder)), open_source(str(tiny_folder)), all_tensors=True)
    assert rows and all(r.delta_fro == 0.0 and r.fro_a == r.fro_b for r in rows)
    assert any(len(r.shape) == 1 for r in rows)  # norm gains are in with all_tensors


def test_sharded_checkpoint_matches_known_changes(tiny_folder, shifted):
    folder, changes = shifted
    assert len(list(folder.glob("*.safetensors"))) > 3
    rows = {r.name: r for r in diff_checkpoints(open_source(str(tiny_folder)), open_source(str(folder)))}
    for name, row in rows.items():
        scale = changes.get(name, 0.0)
        assert row.fro_b == pytest.approx(row.fro_a * (1 + scale), rel=1e-6)
        assert row.delta_fro == pytest.approx(abs(scale) * row.fro_a, rel=1e-6, abs=0.0)
        assert row.relative == pytest.approx(abs(scale), rel=1e-6, abs=0.0)
    kinds = {k.kind: k for k in summarize_kinds(rows.values())}
    assert kinds["mlp.down_proj"].rising == 1 and kinds["self_attn.q_proj"].rising == 0


def test_tensors_are_read_in_bounded_blocks(tiny_folder, shifted, monkeypatch):
    folder, _ = shifted
    reads: list[int] = []
    original = sources_module.read_block

    def counting(handle, name, start, stop):
        block = original(handle, name, start, stop)
        reads.append(block.numel())
        return block

    monkeypatch.setattr(sources_module, "read_block", counting)
    a, b = open_source(str(tiny_folder)), open_source(str(folder))
    whole = diff_checkpoints(a, b)
    reads.clear()
    blocked = diff_checkpoints(a, b, block_elements=1000)
    largest_row = max(s[1] for s in (a.info[n].shape for n in a.names()) if len(s) == 2)
    assert max(reads) <= max(1000, largest_row)
    assert sum(reads) == 2 * sum(torch.Size(a.info[n].shape).numel() for n in a.names() if len(a.info[n].shape) >= 2)
    for x, y in zip(whole, blocked):
        assert y.delta_fro == pytest.approx(x.delta_fro, rel=1e-12, abs=1e-15)


def test_mismatches_get_clear_errors(tiny_folder, tmp_path):
    gpt2, tok, _ = tiny_model("gpt2")
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(CheckpointError, match="different architectures"):
        diff_checkpoints(open_source(str(tiny_folder)), open_source(str(tmp_path / "gpt2")))
    lone = tmp_path / "lone.safetensors"
    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(3, 3)}, str(lone))
    with pytest.raises(CheckpointError, match=r"only in .*tiny"):
        diff_checkpoints(open_source(str(tiny_folder)), open_source(str(lone)))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(3, 4)}, str(wrong))
    with pytest.raises(CheckpointError, match=r"down_proj.weight: shape \(3, 3\)"):
        diff_checkpoints(open_source(str(lone)), open_source(str(wrong)))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        open_source(str(broken))
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_source(str(tmp_path / "nothing"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="only safetensors"):
        open_source(str(tmp_path / "bin"))


def test_cli_table_json_and_figure(tiny_folder, shifted, tmp_path, capsys):
    folder, _ = shifted
    figure = tmp_path / "diff.svg"
    assert main(["diff", str(tiny_folder), str(folder), "--matrices", "--figure", str(figure)]) == 0
    text = capsys.readouterr().out
    assert "mlp.down_proj" in text and "model.layers.1.mlp.down_proj.weight" in text and figure.stat().st_size > 0
    assert main(["diff", str(tiny_folder), str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in data["matrices"]} >= {"model.layers.1.mlp.down_proj.weight"}
    assert main(["diff", str(tiny_folder), str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err

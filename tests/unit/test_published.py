"""Shipped hyperparameters: the research models' published files, how a model finds them, the rule for others."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, GPT2Config, GPTJConfig, LlamaConfig

from editscope.editors import EDITORS, build_editor
from editscope.editors.base import default_config
from editscope.editors.published import hparams_key, published_models, shape_of
from editscope.models import spec_for_config

# The architectures as their hub config.json describe them (the facts models.yaml matches on).
RESEARCH_CONFIGS = {
    "gpt2-xl": GPT2Config(n_layer=48, n_embd=1600, n_head=25, n_positions=1024),
    "gpt-j-6b": GPTJConfig(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, n_positions=2048),
    "llama3-8b": LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                             num_key_value_heads=8, rope_theta=500000.0, vocab_size=128256, max_position_embeddings=8192),
}
LOCATE_EDITORS = ("memit", "rome", "alphaedit", "emmet", "encore")


def _files():
    root = resources.files("editscope.editors").joinpath("hparams")
    return [(editor, key) for editor in LOCATE_EDITORS for key in RESEARCH_CONFIGS if root.joinpath(editor, f"{key}.yaml").is_file()]


def test_every_research_model_has_its_published_files():
    assert set(published_models()) == set(RESEARCH_CONFIGS)
    files = set(_files())
    assert len(files) == 14  # ENCORE ships no GPT-J file (scalable-model-editing/encore has none)
    assert ("encore", "gpt-j-6b") not in files


@pytest.mark.parametrize("editor,key", _files())
def test_published_layers_and_modules_exist_in_the_architecture(editor, key):
    config = RESEARCH_CONFIGS[key]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    spec = spec_for_config(model.config)
    built = build_editor(editor, model_name=key)
    text = resources.files("editscope.editors").joinpath("hparams", editor, f"{key}.yaml").read_text()
    assert text.startswith("# ") and ("github" in text or "/" in text.splitlines()[0])  # the source file is named
    assert built.config.layers == tuple(yaml.safe_load(text)["layers"])
    for layer in built.config.layers:
        assert 0 <= layer < config.num_hidden_layers
        module = model.get_submodule(spec.module_path(layer, "mlp_out"))
        assert spec.as_out_in(module.weight).shape[1] == shape_of(config.to_dict())["d_mlp"]
    if editor == "alphaedit":
        assert built.config.nullspace_threshold == 0.02 and built.config.alpha == 10.0


def test_a_model_finds_its_file_by_hub_id_or_by_its_config(tmp_path):
    assert hparams_key("EleutherAI/gpt-j-6B") == "gpt-j-6b"
    assert hparams_key("smollm2-135m") == "smollm2-135m"
    folder = tmp_path / "my-gpt-j"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RESEARCH_CONFIGS["gpt-j-6b"].to_dict()))
    assert default_config("memit", str(folder))["layers"] == [3, 4, 5, 6, 7, 8]


def test_an_unlisted_model_gets_the_shape_rule(tmp_path):
    """Five MLPs from n_layers / 8 (rounded) and lambda scaled with the MLP width (15,000 at GPT-J's 16,384)."""
    folder = tmp_path / "other"
    folder.mkdir()
    config = LlamaConfig(num_hidden_layers=24, hidden_size=1024, intermediate_size=4096, num_attention_heads=8)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    memit = build_editor("memit", model_name=str(folder)).config
    assert memit.layers == (3, 4, 5, 6, 7) and memit.mom2_update_weight == pytest.approx(3750.0)
    assert build_editor("rome", model_name=str(folder)).config.layers == (5,)
    assert build_editor("emmet", model_name=str(folder)).config.layers == (5,)
    assert build_editor("alphaedit", model_name=str(folder)).config.layers == (3, 4, 5, 6, 7)
    assert build_editor("ft", model_name=str(folder)).config.layers == EDITORS.get("ft").config_class().layers
    tiny = folder.parent / "tiny"
    tiny.mkdir()
    (tiny / "config.json").write_text(json.dumps(LlamaConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128).to_dict()))
    assert build_editor("memit", model_name=str(tiny)).config.layers == (1, 2, 3)  # cut at the last block


def test_smollm2_band_matches_the_rule():
    """The shipped SmolLM2 layers are what the rule derives for its 30 blocks (lambda was measured, see its YAML)."""
    from editscope.editors.locate import band

    assert tuple(default_config("memit", "smollm2-135m")["layers"]) == tuple(band(30))

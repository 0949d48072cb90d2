import pytest
import torch
from transformers import BertConfig

from editscope.errors import UnsupportedArchitectureError
from editscope.models import TINY_ARCHS, spec_for_config, supported_architectures, tiny_model


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_spec_paths_resolve(arch):
    model, _, spec = tiny_model(arch)
    n = spec.num_layers(model)
    assert n == 4
    for part in ("mlp_in", "mlp_out", "attn_out", "mlp", "attn"):
        model.get_submodule(spec.module_path(0, part))
    if spec.mlp_out_norm:
        model.get_submodule(f"{spec.layer_path(0)}.{spec.mlp_out_norm}")
    model.get_submodule(spec.final_norm)
    model.get_submodule(spec.embed)
    model.get_submodule(spec.unembed)
    assert spec.context_length(model.config) == 256


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_mlp_out_orientation_is_out_in(arch):
    """Whatever the storage layout, as_out_in(W) @ x (+ bias) is the module's output."""
    model, _, spec = tiny_model(arch)
    module = model.get_submodule(spec.module_path(2, "mlp_out"))
    weight = spec.mlp_out_weight(model, 2)
    d_model = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    assert weight.shape[0] == d_model
    x = torch.randn(5, weight.shape[1])
    bias = getattr(module, "bias", None)
    expected = x @ weight.T + (bias if bias is not None else 0)
    torch.testing.assert_close(module(x), expected)
    roundtrip = spec.to_stored(weight)
    assert roundtrip.shape == model.get_parameter(spec.weight_name(2)).shape


def test_gpt2_is_transposed_llama_is_not():
    assert tiny_model("gpt2")[2].transposed
    assert not tiny_model("llama")[2].transposed


def test_unknown_architecture_lists_supported():
    with pytest.raises(UnsupportedArchitectureError) as info:
        spec_for_config(BertConfig())
    message = str(info.value)
    assert "'bert'" in message
    for name in supported_architectures():
        assert name in message


def test_check_layer():
    model, _, spec = tiny_model("llama")
    spec.check_layer(model, 3)
    with pytest.raises(ValueError, match="layers 0..3"):
        spec.check_layer(model, 4)


def test_tiny_models_are_deterministic():
    a = tiny_model("llama", seed=1)[0]
    b = tiny_model("llama", seed=1)[0]
    c = tiny_model("llama", seed=2)[0]
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(a.get_parameter(name), b.get_parameter(name))
    assert not torch.equal(a.get_parameter(name), c.get_parameter(name))

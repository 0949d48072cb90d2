"""Method-specific facts of the fine-tuning (ft, ft-l) and LoRA editors, on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraModel

from editscope.config import ConfigError
from editscope.editors import build_editor
from editscope.editors.ft import FTConfig, FTLEditor, request_batch, target_nll
from editscope.models import tiny_model
from editscope.types import EditRequest

REQUESTS = [
    EditRequest(id="a", prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(
        id="b", prompt="{} plays the sport of", subject="Serena Williams", target_new="golf", target_true="tennis"
    ),
]
LORA = {"layers": [1, 2], "steps": 30, "lr": 5e-2, "rank": 4}


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request):
    return tiny_model(request.param, seed=0)


@torch.no_grad()
def _nll(model, tok) -> float:
    return float(target_nll(model, request_batch(model, tok, REQUESTS)))


# -- ft / ft-l --------------------------------------------------------------------------------
def test_ftl_respects_linf_bound(tiny):
    model, tok, _ = tiny
    bound = 1e-3
    editor = build_editor("ft-l", {"layers": [1, 2], "steps": 10, "lr": 1e-2, "norm_constraint": bound})
    delta = editor.compute_delta(model, tok, REQUESTS)
    largest = max(float(d.abs().max()) for d in delta.deltas.values())
    assert largest <= bound + 1e-7
    assert largest > 0.5 * bound  # the bound is active, not trivially met


def test_ftl_refuses_missing_norm_constraint():
    with pytest.raises(ConfigError, match="ft-l needs norm_constraint"):
        build_editor("ft-l", {"norm_constraint": None})
    with pytest.raises(ConfigError, match="ft-l needs norm_constraint"):
        FTLEditor(FTConfig())
    with pytest.raises(ConfigError, match="norm_constraint"):
        build_editor("ft", {"norm_constraint": -1.0})


def test_ft_lowers_target_nll(tiny):
    model, tok, _ = tiny
    before = _nll(model, tok)
    delta = build_editor("ft", {"layers": [1, 2], "steps": 10, "lr": 5e-2}).compute_delta(model, tok, REQUESTS)
    delta.apply_to(model)
    assert _nll(model, tok) < before - 0.5


def test_ft_stop_loss_stops_before_any_step(tiny_llama):
    model, tok, _ = tiny_llama
    delta = build_editor("ft", {"layers": [1], "steps": 5, "stop_loss": 1e9}).compute_delta(model, tok, REQUESTS)
    assert all(bool((d == 0).all()) for d in delta.deltas.values())


def test_ft_keeps_existing_gradients(tiny_llama):
    model, tok, spec = tiny_llama
    param = model.get_parameter(spec.weight_name(1))
    param.grad = torch.ones_like(param)
    try:
        build_editor("ft", {"layers": [1], "steps": 2}).compute_delta(model, tok, REQUESTS)
        assert torch.equal(param.grad, torch.ones_like(param))
    finally:
        param.grad = None


# -- lora -------------------------------------------------------------------------------------
def test_lora_delta_equals_peft_merge(tiny, monkeypatch):
    """The returned delta is what ``merge_and_unload`` adds to a deep copy of the trained adapter model."""
    model, tok, spec = tiny
    merged_deltas: dict[str, torch.Tensor] = {}
    peft_deltas: dict[str, torch.Tensor] = {}
    real_unload = LoraModel.unload

    def spying_unload(self):
        for path in (spec.module_path(layer, "mlp_out") for layer in LORA["layers"]):
            wrapped = self.model.get_submodule(path)
            peft_deltas[f"{path}.weight"] = wrapped.get_delta_weight("editscope").detach().clone()
        twin = copy.deepcopy(self)
        # ``model`` is wrapped in place now: its base weights are named ``...base_layer.weight``.
        originals = {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()}
        merged = twin.merge_and_unload()
        for name, param in merged.named_parameters():
            if not torch.equal(param, originals[name]):
                merged_deltas[name] = param.detach() - originals[name]
        return real_unload(self)

    monkeypatch.setattr(LoraModel, "unload", spying_unload)
    delta = build_editor("lora", LORA).compute_delta(model, tok, REQUESTS)

    assert set(merged_deltas) == set(delta.names) == {spec.weight_name(layer) for layer in LORA["layers"]}
    for name, d in delta.deltas.items():
        assert d.shape == model.get_parameter(name).shape
        torch.testing.assert_close(d, peft_deltas[name], rtol=0, atol=0)
        torch.testing.assert_close(d, merged_deltas[name], rtol=0, atol=1e-6)
        singular = torch.linalg.svdvals(d.double())
        assert singular[LORA["rank"]] <= 1e-5 * singular[0]  # rank <= r up to fp32 rounding
        assert float(d.abs().max()) > 0


def test_lora_leaves_model_structure_unchanged(tiny):
    model, tok, _ = tiny
    types_before = [(n, type(m)) for n, m in model.named_modules()]
    keys_before = list(model.state_dict())
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    attrs_before = set(vars(model))
    build_editor("lora", LORA).compute_delta(model, tok, REQUESTS)
    assert [(n, type(m)) for n, m in model.named_modules()] == types_before
    assert list(model.state_dict()) == keys_before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    assert set(vars(model)) == attrs_before
    assert not hasattr(model, "peft_config")


def test_lora_lowers_target_nll(tiny):
    model, tok, _ = tiny
    before = _nll(model, tok)
    build_editor("lora", LORA).compute_delta(model, tok, REQUESTS).apply_to(model)
    assert _nll(model, tok) < before - 0.5


def test_lora_seeded_and_global_rng_untouched(tiny_gpt2):
    model, tok, _ = tiny_gpt2
    config = {**LORA, "steps": 3}
    state = torch.random.get_rng_state()
    first = build_editor("lora", config).compute_delta(model, tok, REQUESTS)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = build_editor("lora", config).compute_delta(model, tok, REQUESTS)
    other = build_editor("lora", {**config, "seed": 1}).compute_delta(model, tok, REQUESTS)
    for name in first.names:
        assert torch.equal(first.deltas[name], second.deltas[name])
        assert not torch.equal(first.deltas[name], other.deltas[name])


# -- shipped defaults -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ft", "ft-l", "lora"])
def test_smollm2_defaults_load(name):
    config = build_editor(name, model_name="smollm2-135m").config
    assert all(0 <= layer < 30 for layer in config.layers)
    if name == "ft-l":
        assert len(config.layers) == 1 and config.norm_constraint is not None

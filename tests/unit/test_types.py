import pytest
import torch

from editscope.errors import RequestError
from editscope.types import EditRequest, NeighborhoodPrompt, WeightDelta


def make(**kw):
    base = dict(id="1", prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris")
    base.update(kw)
    return EditRequest(**base)


def test_text_and_subject_span():
    r = make()
    assert r.text == "The capital of France is"
    start, end = r.subject_char_span
    assert r.text[start:end] == "France"


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(prompt="The capital of France is"), "prompt"),
        (dict(prompt="{} and {}"), "prompt"),
        (dict(target_new=""), "target_new"),
        (dict(target_true="   "), "target_true"),
        (dict(subject=3), "subject"),
        (dict(paraphrase_prompts=("ok", "")), "paraphrase_prompts[1]"),
        (dict(paraphrase_prompts=["a list"]), "paraphrase_prompts"),
        (dict(neighborhood=(NeighborhoodPrompt("x is", ""),)), "neighborhood[0].answer"),
    ],
)
def test_invalid_fields_are_named(kw, field):
    with pytest.raises(RequestError) as info:
        make(**kw)
    assert info.value.field == field


def test_round_trip_dict():
    r = make(paraphrase_prompts=("France's capital is",), neighborhood=(NeighborhoodPrompt("The capital of Spain is", "Madrid"),))
    d = r.to_dict()
    assert d["neighborhood"] == [{"prompt": "The capital of Spain is", "answer": "Madrid"}]
    assert d["paraphrase_prompts"] == ["France's capital is"]


def test_weight_delta_apply_revert(tiny_llama):
    model, _, spec = tiny_llama
    name = spec.weight_name(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = WeightDelta({name: torch.randn_like(model.get_parameter(name))})
    delta.apply_to(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {name}
    delta.revert(model)
    torch.testing.assert_close(model.get_parameter(name), before[name], rtol=0, atol=1e-6)


def test_non_finite_delta_refused_model_untouched(tiny_llama):
    model, _, spec = tiny_llama
    good, bad = spec.weight_name(0), spec.weight_name(2)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    nan = torch.zeros_like(model.get_parameter(bad))
    nan[0, 0] = float("nan")
    delta = WeightDelta({good: torch.ones_like(model.get_parameter(good)), bad: nan})
    assert not delta.is_finite()
    with pytest.raises(RequestError, match="non-finite"):
        delta.apply_to(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), n


def test_delta_shape_and_name_checked(tiny_llama):
    model, _, spec = tiny_llama
    with pytest.raises(RequestError, match="no parameter"):
        WeightDelta({"nope.weight": torch.zeros(2, 2)}).apply_to(model)
    with pytest.raises(RequestError, match="shape"):
        WeightDelta({spec.weight_name(0): torch.zeros(2, 2)}).apply_to(model)


def test_delta_addition_and_norms():
    a = WeightDelta({"w": torch.ones(2, 2)})
    b = WeightDelta({"w": torch.ones(2, 2), "v": torch.zeros(3)})
    c = a + b
    assert c.names == ["v", "w"]
    assert c.fro_norms()["w"] == pytest.approx(4.0)


def test_applied_restores_bit_exactly(tiny_llama):
    model, _, spec = tiny_llama
    name = spec.weight_name(1)
    before = model.get_parameter(name).detach().clone()
    delta = WeightDelta({name: torch.randn_like(before) * 1e-3})
    with delta.applied(model):
        assert not torch.equal(model.get_parameter(name), before)
    assert torch.equal(model.get_parameter(name), before)

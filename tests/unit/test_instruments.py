import pytest
import torch

from editscope.instruments import INSTRUMENTS
from editscope.instruments.weights import WeightNorms, WeightNormsConfig, spectral_norm
from editscope.models import tiny_model
from editscope.types import WeightDelta


def test_power_iteration_matches_svd():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(30, 50, generator=g)
    sigma, _ = spectral_norm(w, torch.randn(50, generator=g), iters=500, tol=0.0)
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(w, ord=2)), rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_weight_norms_track_edited_and_unedited_layers(arch):
    model, tok, spec = tiny_model(arch)
    instrument = INSTRUMENTS.get("weights")(WeightNormsConfig(edited_layers=(1, 2)))
    instrument.baseline(model, tok)
    before = instrument.measure(model, tok)
    name1 = spec.weight_name(1)
    w = model.get_parameter(name1)
    assert before[f"weight/{name1}/delta_fro"] == 0.0
    assert before[f"weight/{name1}/fro"] == pytest.approx(float(w.detach().norm()), rel=1e-6)
    assert before[f"weight/{name1}/spectral"] == pytest.approx(float(torch.linalg.matrix_norm(spec.as_out_in(w.detach()), ord=2)), rel=1e-4)
    delta = WeightDelta({name1: torch.ones_like(w) * 0.05, spec.weight_name(2): torch.ones_like(w) * 0.05})
    snapshot = {n: p.clone() for n, p in model.state_dict().items()}
    delta.apply_to(model)
    after = instrument.measure(model, tok)
    assert after[f"weight/{name1}/fro"] > before[f"weight/{name1}/fro"]
    assert after[f"weight/{name1}/delta_fro"] == pytest.approx(float(delta.deltas[name1].norm()), rel=1e-5)
    assert after[f"weight/{spec.weight_name(0)}/delta_fro"] == 0.0
    assert after["weight/mlp_out/unedited_max_rel_change"] == 0.0
    assert after["weight/mlp_out/balance"] > before["weight/mlp_out/balance"]
    assert after[f"weight/{name1}/spectral"] == pytest.approx(float(torch.linalg.matrix_norm(spec.as_out_in(w.detach()), ord=2)), rel=1e-4)
    # instruments observe only
    delta.revert(model)
    instrument.measure(model, tok)
    for n, p in model.state_dict().items():
        torch.testing.assert_close(p, snapshot[n], rtol=0, atol=1e-6)


def test_state_round_trip_and_baseline_required():
    model, tok, _ = tiny_model("llama")
    fresh = WeightNorms()
    with pytest.raises(RuntimeError, match="baseline"):
        fresh.measure(model, tok)
    instrument = WeightNorms(WeightNormsConfig(edited_layers=(1,)))
    instrument.baseline(model, tok)
    other = WeightNorms(WeightNormsConfig(edited_layers=(1,)))
    other.load_state_dict(instrument.state_dict())
    assert other.measure(model, tok) == pytest.approx(instrument.measure(model, tok), rel=1e-6)

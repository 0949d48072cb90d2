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
    assert before[f"weight/{name1}/spectral"] == pytest.approx(
        float(torch.linalg.matrix_norm(spec.as_out_in(w.detach()), ord=2)), rel=1e-4
    )
    delta = WeightDelta({name1: torch.ones_like(w) * 0.05, spec.weight_name(2): torch.ones_like(w) * 0.05})
    snapshot = {n: p.clone() for n, p in model.state_dict().items()}
    delta.apply_to(model)
    after = instrument.measure(model, tok)
    assert after[f"weight/{name1}/fro"] > before[f"weight/{name1}/fro"]
    assert after[f"weight/{name1}/delta_fro"] == pytest.approx(float(delta.deltas[name1].norm()), rel=1e-5)
    assert after[f"weight/{spec.weight_name(0)}/delta_fro"] == 0.0
    assert after["weight/mlp_out/unedited_max_rel_change"] == 0.0
    assert after["weight/mlp_out/balance"] > before["weight/mlp_out/balance"]
    assert after[f"weight/{name1}/spectral"] == pytest.approx(
        float(torch.linalg.matrix_norm(spec.as_out_in(w.detach()), ord=2)), rel=1e-4
    )
    # instruments observe only
    delta.revert(model)
    instrument.measure(model, tok)
    for n, p in model.state_dict().items():
        torch.testing.assert_close(p, snapshot[n], rtol=0, atol=1e-6)


def test_state_round_trip_and_baseline_required():
    model, tok, spec = tiny_model("llama")
    fresh = WeightNorms()
    with pytest.raises(RuntimeError, match="baseline"):
        fresh.measure(model, tok)
    instrument = WeightNorms(WeightNormsConfig(edited_layers=(1,)))
    instrument.baseline(model, tok)
    instrument.measure(model, tok)
    # A resumed run calls baseline() on the unedited model, then restores the warm starts.
    other = WeightNorms(WeightNormsConfig(edited_layers=(1,)))
    other.baseline(model, tok)
    other.load_state_dict(instrument.state_dict())
    assert set(instrument.state_dict()) == {f"v.{spec.weight_name(i)}" for i in range(spec.num_layers(model))}
    assert other.measure(model, tok) == pytest.approx(instrument.measure(model, tok), rel=1e-6)
    with pytest.raises(ValueError, match="unexpected state"):
        other.load_state_dict({"w0.x": torch.zeros(1)})


# -- activations and subspace -----------------------------------------------------------------
import math  # noqa: E402

from editscope.instruments.activations import SubspaceConfig, centered, linear_cka, mean_cosine, pca_basis, principal_angles  # noqa: E402
from editscope.instruments.probe import ProbeConfig  # noqa: E402

SMALL = dict(n_texts=4, seq_len=32)


def test_principal_angles_and_cka_on_known_cases():
    e = torch.eye(4, dtype=torch.float64)
    u0 = e[:, :1]
    u1 = ((e[:, 0] + e[:, 1]) / math.sqrt(2))[:, None]
    assert math.degrees(float(principal_angles(u0, u1)[0])) == pytest.approx(45.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64)).Q
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)  # invariant to rotation and isotropic scale
    assert linear_cka(x, torch.randn(200, 6, generator=g, dtype=torch.float64)) < 0.2
    assert mean_cosine(x, 2.0 * x) == pytest.approx(1.0)


def test_pca_basis_from_the_gram_spans_the_top_singular_directions():
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([9.0, 7.0, 5.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64) * scales + 3.0  # the offset must be centered away
    c = centered(x)
    basis = pca_basis(c.T @ c, 3)
    _, _, vh = torch.linalg.svd(c, full_matrices=False)
    assert basis.shape == (6, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert float(principal_angles(basis, vh[:3].T).max()) < 1e-6
    assert float(principal_angles(basis, vh[1:4].T).max()) > 0.5  # a different subspace is told apart


def test_activation_norms_match_hidden_states():
    model, tok, spec = tiny_model("llama")
    instrument = INSTRUMENTS.get("activations")(ProbeConfig(**SMALL))
    metrics = instrument.measure(model, tok)
    rows = []
    with torch.no_grad():
        for window in instrument.windows(tok):
            hidden = model(input_ids=torch.tensor([window]), output_hidden_states=True).hidden_states
            rows.append(hidden[2][0, 1:])  # block 1's output, the first token skipped
    expected = float(torch.cat(rows).norm(dim=1).mean())
    assert metrics["act/layers.1.resid/norm"] == pytest.approx(expected, rel=1e-5)
    assert 0 < metrics["act/layers.2.mlp_out/share"]
    assert {f"act/layers.{i}.{s}/norm" for i in range(4) for s in ("resid", "attn_out", "mlp_out")} <= set(metrics)


def test_subspace_shift_is_zero_unedited_and_starts_at_the_edited_layer():
    model, tok, spec = tiny_model("llama")
    instrument = INSTRUMENTS.get("subspace")(SubspaceConfig(**SMALL, k=4))
    instrument.baseline(model, tok)
    same = instrument.measure(model, tok)
    assert same["subspace/layers.3.resid/cka"] == pytest.approx(1.0)
    assert same["subspace/layers.3.resid/angle_mean"] == pytest.approx(0.0, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    w = model.get_parameter(spec.weight_name(2))
    delta = WeightDelta({spec.weight_name(2): torch.randn(w.shape, generator=g) * 0.5})
    with delta.applied(model):
        moved = instrument.measure(model, tok)
    assert moved["subspace/layers.1.resid/cka"] == pytest.approx(1.0)  # below the edit: untouched
    assert moved["subspace/layers.1.resid/angle_mean"] == pytest.approx(0.0, abs=1e-3)
    assert moved["subspace/layers.2.resid/cka"] < 0.999
    assert moved["subspace/layers.2.resid/angle_mean"] > 1.0
    assert moved["subspace/layers.3.resid/cosine"] < 1.0
    assert instrument.state_dict() == {}  # the baseline is recomputed on resume, not stored


def test_spectrum_of_edited_matrices_and_their_cumulative_update():
    """Condition number and top singular values are exact; a rank-one update has stable rank 1."""
    model, tok, spec = tiny_model("llama")
    instrument = WeightNorms(WeightNormsConfig(edited_layers=(1,), spectrum_top=3))
    instrument.baseline(model, tok)
    name1, name0 = spec.weight_name(1), spec.weight_name(0)
    before = instrument.measure(model, tok)
    assert f"weight/{name0}/cond" not in before  # unedited matrices: norms only
    assert before[f"weight/{name1}/delta_stable_rank"] == 0.0 and before[f"weight/{name1}/delta_sv/1"] == 0.0
    w = model.get_parameter(name1)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(w.shape[0], 1, generator=g), torch.randn(1, w.shape[1], generator=g)
    delta = WeightDelta({name1: 0.3 * u @ v})
    delta.apply_to(model)
    after = instrument.measure(model, tok)
    sigma = torch.linalg.svdvals(spec.as_out_in(w.detach()).double())
    assert after[f"weight/{name1}/cond"] == pytest.approx(float(sigma[0] / sigma[-1]), rel=1e-9)
    assert [after[f"weight/{name1}/sv/{i}"] for i in (1, 2, 3)] == pytest.approx(sigma[:3].tolist(), rel=1e-9)
    assert after[f"weight/{name1}/spectral"] == after[f"weight/{name1}/sv/1"]
    assert after[f"weight/{name1}/delta_sv/1"] == pytest.approx(0.3 * float(u.norm() * v.norm()), rel=1e-5)
    assert after[f"weight/{name1}/delta_sv/2"] < 1e-5 * after[f"weight/{name1}/delta_sv/1"]
    assert after[f"weight/{name1}/delta_stable_rank"] == pytest.approx(1.0, rel=1e-6)
    assert after["weight/mlp_out/edited_cond_mean"] == after[f"weight/{name1}/cond"]
    assert "weight/mlp_out/edited_cond_mean" in before and f"weight/{name0}/spectral" in after

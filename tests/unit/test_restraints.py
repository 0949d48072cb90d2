"""RECT and PRUNE: each method's defining fact, on hand-made matrices and in an editor on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from editscope.editors import build_editor
from editscope.linalg.restraints import prune_singular_values, prune_update, rect_mask
from editscope.models import tiny_model
from editscope.types import EditRequest

REQUESTS = [
    EditRequest(id="a", prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(id="b", prompt="{} plays the", subject="Yo-Yo Ma", target_new="trumpet", target_true="cello"),
]
TINY = {"layers": [1, 2], "context_lengths": [], "stats_samples": 50, "stats_seq_len": 32, "z": {"steps": 10, "autocast": None},
        "mom2_update_weight": 10.0}


def test_rect_keeps_the_largest_relative_changes():
    """Equal updates over weights 1..10: the relative change is 1/w. The reference's threshold is the
    (0.6 n)-th smallest change, kept with ``>=``: the 5 smallest weights here (the threshold entry too);
    on a real matrix that is 40% to one entry."""
    weight = torch.arange(1.0, 11.0).reshape(2, 5)
    mask = rect_mask(torch.ones(2, 5), weight, 0.4)
    assert mask.reshape(-1).tolist() == [True] * 5 + [False] * 5
    big = rect_mask(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)), torch.randn(64, 32), 0.4)
    assert int(big.sum()) == 64 * 32 - int(64 * 32 * 0.6) + 1  # 821 of 2048


def test_prune_shrinks_only_singular_values_above_beta():
    values = torch.tensor([50.0, 20.0, 10.0, 3.0], dtype=torch.float64)
    out = prune_singular_values(values, beta=10.0)
    assert out.tolist() == pytest.approx([math.log(5.0) + 10.0, math.log(2.0) + 10.0, 10.0, 3.0])
    assert prune_singular_values(values, 10.0, base=2.0)[0] == pytest.approx(math.log2(5.0) + 10.0)
    g = torch.Generator().manual_seed(0)
    accumulated = torch.randn(12, 8, generator=g, dtype=torch.float64) * 30.0
    restrained = prune_update(accumulated, beta=10.0)
    before, after = torch.linalg.svdvals(accumulated), torch.linalg.svdvals(restrained)
    torch.testing.assert_close(after, prune_singular_values(before, 10.0))
    assert float(after.max()) <= 10.0 + math.log(float(before.max()) / 10.0) + 1e-9  # PRUNE's bound on the largest


def test_memit_with_rect_writes_the_kept_fraction():
    model, tok, spec = tiny_model("llama")
    delta = build_editor("memit", {**TINY, "rect_keep": 0.4}).compute_delta(model, tok, REQUESTS)
    for name, d in delta.deltas.items():
        assert float((d != 0).float().mean()) == pytest.approx(0.4, abs=0.01), name


def test_memit_with_prune_holds_the_restrained_accumulation(monkeypatch):
    """After two batches the model carries PRUNE(raw1 + raw2), raw2 computed on W0 + raw1 (unrestrained); the state round-trips."""
    model, tok, spec = tiny_model("llama")
    editor = build_editor("memit", {**TINY, "prune": True, "mom2_update_weight": 0.1})
    editor.prepare(model, tok)
    editor._beta = {layer: 1.0 for layer in editor._beta}  # below the accumulation's largest singular value: PRUNE acts
    applied = {}
    for batch in ([REQUESTS[0]], [REQUESTS[1]]):
        delta = editor.compute_delta(model, tok, batch)
        delta.apply_to(model)
        editor.commit(batch, delta)
        for name, d in delta.deltas.items():
            applied[name] = applied.get(name, 0) + d.double()
    for layer in (1, 2):
        raw = editor._raw[layer]
        name = spec.weight_name(layer)
        torch.testing.assert_close(spec.as_out_in(applied[name]), prune_update(raw, 1.0), rtol=1e-4, atol=1e-5)
        largest = float(torch.linalg.svdvals(raw).max())
        assert largest > 1.0
        assert float(torch.linalg.svdvals(spec.as_out_in(applied[name])).max()) == pytest.approx(math.log(largest) + 1.0, rel=1e-4)
    other = build_editor("memit", {**TINY, "prune": True})
    other.load_state_dict(editor.state_dict())
    assert other._beta == editor._beta and torch.allclose(other._raw[1], editor._raw[1].float().double())


def test_prune_computes_later_edits_on_the_unrestrained_accumulation():
    """As the reference, which restrains once after the last edit: the accumulation PRUNE keeps is
    exactly what plain MEMIT accumulates over the same batches."""
    model, tok, spec = tiny_model("llama")
    plain, pruned = build_editor("memit", {**TINY, "mom2_update_weight": 0.1}), build_editor("memit", {**TINY, "prune": True, "mom2_update_weight": 0.1})
    totals = {}
    for editor in (plain, pruned):
        editor.prepare(model, tok)
        editor._beta = {layer: 1.0 for layer in editor._beta}
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        total = {}
        for batch in ([REQUESTS[0]], [REQUESTS[1]]):
            delta = editor.compute_delta(model, tok, batch)
            delta.apply_to(model)
            editor.commit(batch, delta)
            for name, d in delta.deltas.items():
                total[name] = total.get(name, 0) + d.double()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
        totals[editor.config.prune] = total
    for layer in (1, 2):
        torch.testing.assert_close(pruned._raw[layer], spec.as_out_in(totals[False][spec.weight_name(layer)]), rtol=1e-4, atol=1e-5)


def test_norm_anchors_rescale_values_and_skip_outliers():
    """v* = v0 + (z - h) goes to the reference norm; beyond twice the reference the edit is skipped (target h)."""
    from editscope.linalg.restraints import anchor_reference, anchor_values

    h = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    v0 = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    z = torch.tensor([[1.0, 1.0], [3.0, 30.0]])  # v* = (0.5, 3) and (0.5, 30)
    anchored, skipped = anchor_values(z, h, v0, reference=10.0)
    assert skipped.tolist() == [False, True]
    vstar = anchored - (h - v0)
    assert float(vstar[:, 0].norm()) == pytest.approx(10.0)  # the anchored norm
    torch.testing.assert_close(anchored[:, 1], h[:, 1])  # skipped: v* = v0, the target is h
    assert anchor_reference(torch.tensor([1.0] * 19 + [100.0])) == pytest.approx(1.0)  # the top 5% dropped


def test_memit_with_norm_anchors_measures_and_caches_the_reference(monkeypatch):
    from editscope.editors import anchors

    model, tok, _ = tiny_model("llama")
    calls = []
    real = anchors.compute_z
    monkeypatch.setattr(anchors, "compute_z", lambda *a, **k: calls.append(1) or real(*a, **k))
    settings = {**TINY, "norm_anchor": True, "anchor_samples": 6}
    editor = build_editor("memit", settings)
    delta = editor.compute_delta(model, tok, REQUESTS)
    assert editor._anchor > 0 and len(calls) == 1 and 0 <= editor.last_skipped <= 2
    assert all(torch.isfinite(d).all() for d in delta.deltas.values())
    again = build_editor("memit", settings)
    again.prepare(model, tok)
    assert again._anchor == editor._anchor and len(calls) == 1  # read from the cache
    other = build_editor("memit", settings)
    other.load_state_dict(editor.state_dict())
    assert other._anchor == editor._anchor


def test_norm_anchor_cache_is_keyed_by_what_auto_resolves_to(monkeypatch):
    """A reference measured with z* in float32 is not read back where ``auto`` resolves to bf16."""
    from editscope.editors import anchors

    model, tok, _ = tiny_model("llama")
    calls = []
    real = anchors.compute_z
    monkeypatch.setattr(anchors, "compute_z", lambda *a, **k: calls.append(1) or real(*a, **k))
    settings = {**TINY, "z": {"steps": 4, "autocast": "auto"}, "norm_anchor": True, "anchor_samples": 4}
    for precision, measured in (("fp32", 1), ("fp32", 1), ("bf16", 2), ("bf16", 2)):
        monkeypatch.setenv("EDITSCOPE_PRECISION", precision)
        build_editor("memit", settings).prepare(model, tok)
        assert len(calls) == measured, precision

"""MEND: the network's math, gradient factors, the low-rank edited pass, training, checkpoints, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.conftest import train_tiny_mend

from editscope.cli import main
from editscope.config import ConfigError, to_dict
from editscope.data import load_requests
from editscope.editors import build_editor
from editscope.editors.ft import request_batch, target_nll
from editscope.editors.mend import MENDCheckpointError, MENDNetwork, MENDTrainConfig, MENDTrainer, load_checkpoint, split_requests
from editscope.editors.mend.factors import edit_sites, gradient_factors, low_rank_edits, pack_groups, tokens_of
from editscope.editors.mend.locality import (
    departure_points,
    divergence_per_position,
    kl_per_position,
    target_lift,
    text_locality_kl,
    text_pass,
    text_windows,
)
from editscope.editors.mend.network import NORM_EPS, WeightSlot, mend_update, merge_moments, rank_one_gradient
from editscope.editors.mend.training import per_row_nll
from editscope.evaluation import score_targets
from editscope.models import TINY_ARCHS, model_fingerprint, tiny_model
from editscope.types import EditRequest, WeightDelta

REQUESTS = [
    EditRequest(id="a", prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(id="b", prompt="{} plays the sport of", subject="Serena Williams", target_new="golf", target_true="tennis"),
]
SLOTS = [WeightSlot("w0", 6, 4), WeightSlot("w1", 6, 4), WeightSlot("w2", 4, 6)]


def _network(rank: int = 3, perturb: bool = False) -> MENDNetwork:
    net = MENDNetwork(SLOTS, rank=rank, hidden_layers=1, step_size_init=0.5, seed=0)
    gen = torch.Generator().manual_seed(1)
    net.train()
    for key in net.nets:
        slot = next(s for s in SLOTS if s.shape_key == key)
        net.nets[key](torch.randn(50, slot.in_features, generator=gen) * 3 + 1, torch.randn(50, slot.out_features, generator=gen), 0)
    if perturb:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return net.eval()


# -- network math ------------------------------------------------------------------------------
def test_merged_moments_equal_the_batch_statistics():
    rows = torch.randn(37, 5, dtype=torch.float64) * 2 + 3
    count, mean, m2 = torch.zeros((), dtype=torch.float64), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for chunk in rows.split([1, 10, 26]):
        count, mean, m2 = merge_moments(count, mean, m2, chunk)
    assert int(count) == 37
    assert torch.allclose(mean, rows.mean(0)) and torch.allclose(m2 / (count - 1), rows.var(0))


def test_initial_network_is_the_identity_on_normalized_inputs():
    net = _network()
    gen = torch.Generator().manual_seed(2)
    u, delta = torch.randn(7, 4, generator=gen), torch.randn(7, 6, generator=gen)
    u_tilde, delta_tilde = net.transform(0, u, delta)
    stats = net.nets["6x4"]
    u_std = (stats.u_moments.m2 / (stats.u_moments.count - 1)).sqrt()
    expected_u = (u - stats.u_moments.mean.float()) / (u_std.float() + NORM_EPS)
    assert torch.allclose(u_tilde, expected_u, atol=1e-6)
    assert torch.allclose(delta_tilde, stats.delta_moments.normalize(delta), atol=1e-6)
    assert not torch.allclose(u_tilde, u)  # normalization did something


def test_single_token_update_is_the_rank_one_formula():
    net = _network(perturb=True)
    u, delta = torch.randn(1, 6), torch.randn(1, 4)
    u_tilde, delta_tilde = net.transform(2, u, delta)
    expected = -net.step_sizes[2] * torch.outer(delta_tilde[0], u_tilde[0])
    update = net.weight_delta(2, u, delta)
    assert update.shape == (4, 6)
    assert torch.allclose(update, expected, atol=1e-6)
    assert torch.linalg.matrix_rank(update) == 1


def test_batched_update_is_the_sum_of_single_updates():
    net = _network(perturb=True)
    u, delta = torch.randn(9, 4), torch.randn(9, 6)
    together = net.weight_delta(1, u, delta)
    apart = sum(net.weight_delta(1, u[i : i + 1], delta[i : i + 1]) for i in range(9))
    assert torch.allclose(together, apart, atol=1e-5)
    assert torch.allclose(rank_one_gradient(u, delta), sum(torch.outer(delta[i], u[i]) for i in range(9)), atol=1e-5)
    assert torch.allclose(mend_update(u, delta, 2.0), -2.0 * delta.T @ u)


def test_modes_condition_the_shared_network():
    net = _network(perturb=True)
    u, delta = torch.randn(3, 4), torch.randn(3, 6)
    assert net.modes == {"w0": 0, "w1": 1, "w2": 0}
    assert not torch.allclose(net.transform(0, u, delta)[0], net.transform(1, u, delta)[0])


def test_eval_mode_freezes_the_statistics():
    net = _network()
    before = net.nets["6x4"].u_moments.mean.clone()
    net.transform(0, torch.randn(5, 4) + 10, torch.randn(5, 6))
    assert torch.equal(net.nets["6x4"].u_moments.mean, before)


def test_pack_groups_keeps_order_and_pads_with_zeros():
    values = torch.arange(10.0).reshape(5, 2)
    packed = pack_groups(values, torch.tensor([1, 0, 1, 1, 0]), 3)
    assert packed.shape == (3, 3, 2)
    assert packed[0, :2].tolist() == [[2, 3], [8, 9]] and packed[1].tolist() == [[0, 1], [4, 5], [6, 7]]
    assert packed[0, 2].abs().sum() == 0 and packed[2].abs().sum() == 0


# -- factors and the edited pass -----------------------------------------------------------------
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_gradient_factors_give_the_weight_gradient(arch):
    model, tok, spec = tiny_model(arch)
    sites = edit_sites(model, spec, (-1,), ("mlp_in", "mlp_out"))
    batch = request_batch(model, tok, REQUESTS)
    rows = torch.arange(len(REQUESTS))
    factors, _ = gradient_factors(model, sites, batch.forward_kwargs(), lambda logits: per_row_nll(logits, batch, rows).sum())
    names = [s.name for s in sites]
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    try:
        per_row_nll(model(**batch.forward_kwargs()).logits, batch, rows).sum().backward()
        for site in sites:
            u = tokens_of(factors.u[site.name], batch.attention_mask)
            delta = tokens_of(factors.delta[site.name], batch.attention_mask)
            expected = params[site.name].grad
            got = spec.to_stored(rank_one_gradient(u, delta))
            assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max())), site.name
    finally:
        for name in names:
            params[name].requires_grad_(False)
            params[name].grad = None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_low_rank_hooks_equal_the_applied_delta(arch):
    model, tok, spec = tiny_model(arch)
    sites = edit_sites(model, spec, (-2, -1), ("mlp_in", "mlp_out"))
    batch = request_batch(model, tok, REQUESTS)
    gen = torch.Generator().manual_seed(0)
    factors, deltas = {}, {}
    for site in sites:
        u = torch.randn(2, 3, site.slot.in_features, generator=gen) * 0.05  # [groups, n, in]
        d = torch.randn(2, 3, site.slot.out_features, generator=gen) * 0.05
        factors[site.name] = (u, d)
        deltas[site.name] = [spec.to_stored(d[g].T @ u[g]) for g in range(2)]
    owner = torch.tensor([1, 0])
    with torch.no_grad(), low_rank_edits(model, sites, factors, owner):
        hooked = model(**batch.forward_kwargs()).logits
    for row, group in enumerate(owner.tolist()):
        with torch.no_grad(), WeightDelta({n: deltas[n][group] for n in deltas}).applied(model):
            applied = model(**batch.forward_kwargs()).logits[row]
        assert torch.allclose(hooked[row], applied, atol=1e-4)


# -- the editor --------------------------------------------------------------------------------
def test_batched_edit_is_the_sum_of_single_edits(mend_checkpoint):
    model, tok, _ = tiny_model("llama")
    editor = build_editor("mend", {"checkpoint": str(mend_checkpoint("llama"))})
    both = editor.compute_delta(model, tok, REQUESTS)
    single = editor.compute_delta(model, tok, REQUESTS[:1]) + editor.compute_delta(model, tok, REQUESTS[1:])
    assert both.names == single.names == sorted(editor.edited_parameters(model))
    for name in both.names:
        assert torch.allclose(both.deltas[name], single.deltas[name], atol=1e-5 * float(both.deltas[name].abs().max()))


def test_edit_scale_multiplies_the_update_and_must_be_positive(mend_checkpoint):
    model, tok, _ = tiny_model("llama")
    folder = str(mend_checkpoint("llama"))
    full = build_editor("mend", {"checkpoint": folder}).compute_delta(model, tok, REQUESTS)
    half = build_editor("mend", {"checkpoint": folder, "edit_scale": 0.5}).compute_delta(model, tok, REQUESTS)
    for name in full.names:
        assert full.deltas[name].abs().max() > 0
        assert torch.allclose(half.deltas[name], 0.5 * full.deltas[name], atol=1e-6 * float(full.deltas[name].abs().max()))
    with pytest.raises(ConfigError, match="edit_scale"):
        build_editor("mend", {"checkpoint": folder, "edit_scale": 0.0})


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_trained_network_edits_every_tiny_architecture(arch, mend_checkpoint):
    model, tok, _ = tiny_model(arch)
    editor = build_editor("mend", {"checkpoint": str(mend_checkpoint(arch))})
    before = [s.logprob for s in score_targets(model, tok, [r.text for r in REQUESTS], [r.target_new for r in REQUESTS])]
    delta = editor.compute_delta(model, tok, REQUESTS)
    assert delta.is_finite() and set(delta.names) == set(editor.edited_parameters(model))
    with torch.no_grad(), delta.applied(model):
        after = [s.logprob for s in score_targets(model, tok, [r.text for r in REQUESTS], [r.target_new for r in REQUESTS])]
    assert all(a > b for a, b in zip(after, before)) and sum(after) - sum(before) > 2.0, (before, after)


def test_training_lowers_the_post_edit_loss(tmp_path):
    """The edit made by a trained network beats the edit of the same network after one step."""
    model, tok, _ = tiny_model("llama")
    requests = [r for r in load_requests("demo")[:60]]
    train, _ = split_requests(requests, 0.2, 0)
    probe = train[:12]

    def post_edit_nll(folder) -> float:
        editor = build_editor("mend", {"checkpoint": str(folder)})
        losses = []
        for request in probe:
            with torch.no_grad(), editor.compute_delta(model, tok, [request]).applied(model):
                losses.append(float(target_nll(model, request_batch(model, tok, [request]))))
        return sum(losses) / len(losses)

    with torch.no_grad():
        before = sum(float(target_nll(model, request_batch(model, tok, [r]))) for r in probe) / len(probe)
    one_step = post_edit_nll(train_tiny_mend(model, tok, tmp_path / "one", steps=1))
    trained = post_edit_nll(train_tiny_mend(model, tok, tmp_path / "trained", steps=60))
    assert trained < 0.7 * one_step < before, (before, one_step, trained)


# -- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_round_trip(mend_checkpoint):
    folder = mend_checkpoint("gpt2")
    checkpoint = load_checkpoint(folder, optimizer=True)
    assert checkpoint.step == 30 and checkpoint.meta["complete"] and checkpoint.meta["config"]["rank"] == 16
    network = checkpoint.build_network()
    for key, value in network.state_dict().items():
        assert torch.equal(value, checkpoint.network[key]), key
    assert checkpoint.optimizer is not None and checkpoint.optimizer["state"]
    held = load_requests(folder / "held_out.jsonl")
    assert [r.id for r in held] == checkpoint.meta["data"]["held_out_ids"] and len(held) == 12
    model, tok, _ = tiny_model("gpt2")
    assert checkpoint.fingerprint == model_fingerprint(model)


def test_resumed_training_continues_bit_identically(tmp_path, one_thread):
    model, tok, _ = tiny_model("llama")
    requests = load_requests("demo")[:40]
    config = MENDTrainConfig(layers=(-1,), rank=8, steps=6, batch_size=3, lr=1e-3, checkpoint_every=3, autocast=None)
    train, held = split_requests(requests, config.held_out, config.seed)

    def trainer(cfg):
        return MENDTrainer(model, tok, train, held, cfg, model_name="tiny", data_name="demo")

    straight = trainer(config)
    straight.train(tmp_path / "straight")

    def interrupt(step, total, metrics):
        if step == 4:
            raise KeyboardInterrupt  # after step 4; the last checkpoint is step 3's

    with pytest.raises(KeyboardInterrupt):
        trainer(config).train(tmp_path / "interrupted", interrupt)
    resumed = trainer(config)
    saved = load_checkpoint(tmp_path / "interrupted", optimizer=True)
    resumed.restore(saved)
    assert resumed.step == 3 and resumed.wall_s == saved.meta["wall_s"] > 0  # training time carries over the resume
    resumed.train(tmp_path / "interrupted")
    assert load_checkpoint(tmp_path / "interrupted").meta["wall_s"] > saved.meta["wall_s"]
    a, b = straight.network.state_dict(), resumed.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(tmp_path / "interrupted").step == 6
    with pytest.raises(ConfigError, match="rank"):
        trainer(MENDTrainConfig(**{**config.__dict__, "rank": 4})).restore(load_checkpoint(tmp_path / "straight", optimizer=True))


def test_checkpoint_for_another_model_is_refused(mend_checkpoint):
    folder = mend_checkpoint("llama")
    other, tok, _ = tiny_model("llama", seed=1)
    editor = build_editor("mend", {"checkpoint": str(folder)})
    trained_for = load_checkpoint(folder).fingerprint
    with pytest.raises(MENDCheckpointError, match=f"fingerprint {trained_for}.*fingerprint {model_fingerprint(other)}"):
        editor.compute_delta(other, tok, REQUESTS)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest", "bad-json"])
def test_corrupt_checkpoint_is_a_clear_error(mend_checkpoint, tmp_path, damage):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(mend_checkpoint("llama"), folder)
    target = folder / "hypernet.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "no-manifest":
        (folder / "manifest.json").unlink()
    else:
        (folder / "mend.json").write_text("{not json")
    model, tok, _ = tiny_model("llama")
    with pytest.raises(MENDCheckpointError, match="corrupt or incomplete MEND checkpoint"):
        build_editor("mend", {"checkpoint": str(folder)}).compute_delta(model, tok, REQUESTS)


def test_missing_checkpoint_and_wrong_layers_are_clear_errors(mend_checkpoint, tmp_path):
    model, tok, _ = tiny_model("llama")
    with pytest.raises(ConfigError, match="no such folder .*editscope mend train"):
        build_editor("mend", {"checkpoint": str(tmp_path / "nothing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(MENDCheckpointError, match="is not a MEND checkpoint"):
        build_editor("mend", {"checkpoint": str(tmp_path / "empty")}).compute_delta(model, tok, REQUESTS)
    with pytest.raises(MENDCheckpointError, match="no trained hypernetwork"):
        build_editor("mend").prepare(model, tok)  # the default location is empty
    with pytest.raises(ConfigError, match=r"layers \[1\] asked for, but .* trained for layers \[2, 3\]"):
        build_editor("mend", {"checkpoint": str(mend_checkpoint("llama")), "layers": [1]}).prepare(model, tok)
    with pytest.raises(ValueError, match="not a block part"):
        MENDTrainer(model, tok, REQUESTS, [], MENDTrainConfig(parts=("mlp_gate",)), model_name="t", data_name="d")


# -- the locality loss on unrelated text (Eq. 4b) ----------------------------------------------
def _text_pass_inputs(arch: str = "llama", layers=(-2, -1)):
    from editscope.data.corpora import TextCorpus

    model, tok, spec = tiny_model(arch)
    sites = edit_sites(model, spec, layers, ("mlp_in", "mlp_out"))
    corpus = TextCorpus(("The quick brown fox jumps over the lazy dog. " * 3, "Short.", "Paris is the capital of France."),
                        {"source": "test", "fingerprint": "x"})
    ids = text_windows(tok, corpus, 16)
    gen = torch.Generator().manual_seed(0)
    packed = {}
    for site in sites:
        u = (torch.randn(2, 3, site.slot.in_features, generator=gen) * 0.2).requires_grad_()
        d = (torch.randn(2, 3, site.slot.out_features, generator=gen) * 0.2).requires_grad_()
        packed[site.name] = (u, d)
    return model, spec, sites, ids, packed


def test_text_windows_are_consecutive_slices_and_short_documents_are_dropped():
    from editscope.data.corpora import TextCorpus

    _, tok, _ = tiny_model("llama")
    text = "The quick brown fox jumps over the lazy dog. " * 3  # 135 bytes: 8 windows of 16 byte tokens
    corpus = TextCorpus((text, "Short."), {"source": "test", "fingerprint": "x"})
    windows = text_windows(tok, corpus, 16)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert windows.shape == (len(ids) // 16, 16) and windows.dtype == torch.long
    assert windows.flatten().tolist() == ids[: windows.numel()]
    with pytest.raises(ConfigError, match="loc_text_tokens"):
        text_windows(tok, corpus, 1000)


def test_kl_per_position_is_the_reference_kl_and_zero_on_equal_logits():
    gen = torch.Generator().manual_seed(0)
    base, edited = torch.randn(2, 5, 11, generator=gen), torch.randn(2, 5, 11, generator=gen)
    reference = torch.nn.functional.kl_div(edited.log_softmax(-1), base.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_per_position(base, edited), reference, atol=1e-6)
    assert (kl_per_position(base, edited) > 0).all() and torch.equal(kl_per_position(base, base), torch.zeros(2, 5))
    assert text_locality_kl(base, edited) == pytest.approx(float(reference.mean()), abs=1e-6)


def test_reverse_and_symmetric_divergences():
    gen = torch.Generator().manual_seed(3)
    base, edited = torch.randn(3, 4, 9, generator=gen), torch.randn(3, 4, 9, generator=gen)
    forward, reverse = kl_per_position(base, edited), kl_per_position(edited, base)
    assert not torch.allclose(forward, reverse)  # KL is not symmetric on these logits
    assert torch.equal(divergence_per_position(base, edited), forward)
    assert torch.equal(divergence_per_position(base, edited, "reverse"), reverse)
    assert torch.allclose(divergence_per_position(base, edited, "symmetric"), (forward + reverse) / 2)
    assert torch.allclose(divergence_per_position(base, edited, "symmetric"), divergence_per_position(edited, base, "symmetric"))
    assert text_locality_kl(base, edited, "reverse") == pytest.approx(float(reverse.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="unknown locality divergence 'l2'"):
        divergence_per_position(base, edited, "l2")


def test_reverse_kl_charges_a_lifted_unlikely_token_more_than_forward_kl():
    base = torch.log(torch.tensor([[0.6, 0.3, 0.099, 0.001]]))
    edited = torch.log(torch.tensor([[0.45, 0.25, 0.1, 0.2]]))  # the unlikely last token lifted 200-fold
    assert float(divergence_per_position(base, edited, "reverse")) > 3 * float(divergence_per_position(base, edited, "forward"))


def test_target_lift_is_the_clamped_rise_of_the_new_object_where_it_parts_from_the_answer():
    from editscope.tokens import encode_pair, target_batch

    _, tok, _ = tiny_model("llama")  # a byte-level tokenizer: every answer starts with the same space token
    prompts = ["The capital of France is", "The capital of Spain is", "The capital of Italy is"]
    targets = ["Rome", "Madrid", "Rome city"]
    batch = target_batch(tok, prompts, targets, torch.device("cpu"))
    edit_rows, loc_rows = torch.tensor([0, 0]), torch.tensor([1, 2])
    rows, columns, tokens = departure_points(batch, loc_rows, edit_rows)
    rome, madrid = encode_pair(tok, prompts[0], "Rome")[1], encode_pair(tok, prompts[1], "Madrid")[1]
    assert rome[0] == madrid[0] and rome[1] != madrid[1]
    # row 1 parts from " Rome" at its second token; " Rome" is a prefix of row 2's " Rome city": no point
    assert rows.tolist() == [1] and tokens.tolist() == [rome[1]] and columns.tolist() == [batch.keep - len(madrid) + 1]
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(3, batch.keep, len(tok), generator=gen)
    column, new = int(columns[0]), rome[1]
    edited = base.clone()
    edited[1, column, new] += 2.0  # lift o*'s token where it parts from " Madrid"
    edited[1, column + 1 :, new] += 5.0  # other positions do not count
    edited[2, :, new] += 5.0  # nor does the row without a departure point
    logp = lambda logits: torch.log_softmax(logits[1, column], -1)[new]  # noqa: E731
    expected = float(logp(edited) - logp(base))
    assert 0 < expected < 2.0
    assert float(target_lift(base, edited, batch, loc_rows, edit_rows)) == pytest.approx(expected, rel=1e-5)
    assert float(target_lift(base, base, batch, loc_rows, edit_rows)) == 0.0
    lowered = base.clone()
    lowered[1, column, new] -= 3.0
    assert float(target_lift(base, lowered, batch, loc_rows, edit_rows)) == 0.0  # a fall is not rewarded
    assert float(target_lift(base, edited, batch, torch.tensor([2]), torch.tensor([0]))) == 0.0


def test_target_lift_weight_enters_the_training_loss():
    model, tok, _ = tiny_model("llama")
    requests = load_requests("demo")[:40]
    config = MENDTrainConfig(layers=(-1,), rank=8, steps=1, batch_size=3, target_lift_weight=2.0, loc_divergence="reverse", autocast=None)
    train, held = split_requests(requests, config.held_out, config.seed)
    trainer = MENDTrainer(model, tok, train, held, config, model_name="tiny", data_name="demo")
    rows = trainer.rows_for(0)
    assert rows.loc_edit_rows.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # each neighbor row points at its own edit row
    torch.manual_seed(0)
    with torch.no_grad():  # a network that edits from the first step, so the edit lifts o* somewhere
        for layer in trainer.network.nets.values():
            for block in layer.layers:
                block.up.normal_(0, 0.5)
        trainer.network.log_step_sizes.fill_(math.log(5.0))
    metrics = trainer.train_step()
    share = config.loc_text_share
    locality = config.loc_weight * ((1 - share) * metrics["loc_kl"] + share * metrics["text_kl"])
    assert metrics["target_lift"] > 0 and metrics["loc_kl"] > 0
    assert metrics["loss"] > locality + 2.0 * metrics["target_lift"]  # plus the (positive) edit NLL term


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_text_kl_is_zero_without_an_edit_and_trains_the_edit_factors(arch):
    model, spec, sites, ids, packed = _text_pass_inputs(arch)
    owner = torch.arange(ids.shape[0]) % 2
    zero = {name: (u.detach(), torch.zeros_like(d)) for name, (u, d) in packed.items()}  # a zero step size
    base, edited = text_pass(model, spec, sites, zero, owner, ids, None)
    assert base.shape == (ids.shape[0], ids.shape[1], model.config.vocab_size)
    assert float(text_locality_kl(base, edited.detach())) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        assert torch.allclose(base, model(input_ids=ids).logits, atol=1e-5)  # the replayed lower blocks change nothing
    base, edited = text_pass(model, spec, sites, packed, owner, ids, None)
    kl = text_locality_kl(base, edited)
    assert float(kl.detach()) > 1e-4 and not base.requires_grad
    kl.backward()
    for name, (u, d) in packed.items():
        assert u.grad is not None and d.grad is not None and float(d.grad.abs().sum()) > 0, name
    with torch.no_grad(), low_rank_edits(model, sites, packed, owner):
        assert torch.allclose(edited, model(input_ids=ids).logits, atol=1e-5)  # each window under its own edit


def test_text_only_locality_trains_the_network_without_neighbor_rows(tmp_path):
    model, tok, _ = tiny_model("llama")
    requests = load_requests("demo")[:40]
    config = MENDTrainConfig(layers=(-1,), rank=8, steps=1, batch_size=3, edit_weight=0.0, loc_text_share=1.0,
                             loc_text_rows=4, loc_text_tokens=16, autocast=None)
    train, held = split_requests(requests, config.held_out, config.seed)
    trainer = MENDTrainer(model, tok, train, held, config, model_name="tiny", data_name="demo")
    assert trainer.rows_for(0).loc_rows.numel() == 0 and trainer.text_rows_for(0).shape == (4, 16)
    assert torch.equal(trainer.text_rows_for(5), trainer.text_rows_for(5)) and not torch.equal(trainer.text_rows_for(5), trainer.text_rows_for(6))
    metrics = trainer.train_step()
    assert metrics["loc_kl"] == 0.0 and metrics["target_lift"] == 0.0 and metrics["text_kl"] > 0 and metrics["loss"] == pytest.approx(config.loc_weight * metrics["text_kl"])
    grads = [p.grad for n, p in trainer.network.named_parameters() if n != "log_step_sizes"]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)  # the text KL alone reaches the network
    trainer.save(tmp_path / "ckpt")
    meta = load_checkpoint(tmp_path / "ckpt").meta
    assert meta["loc_text"]["fingerprint"] == trainer.text_meta["fingerprint"] and meta["loc_text"]["windows"] > 0
    assert meta["config"]["loc_corpus"] == "default" and meta["config"]["loc_text_share"] == 1.0


def test_each_edit_gets_distinct_neighbor_rows_of_its_own():
    model, tok, _ = tiny_model("llama")
    requests = load_requests("demo")[:40]
    config = MENDTrainConfig(layers=(-1,), rank=8, batch_size=3, loc_neighbor_rows=3, autocast=None)
    train, held = split_requests(requests, config.held_out, config.seed)
    trainer = MENDTrainer(model, tok, train, held, config, model_name="tiny", data_name="demo")
    rows = trainer.rows_for(0)
    assert rows.loc_rows.numel() == 9 and rows.owner[rows.loc_rows].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for index, request in enumerate(trainer.requests_for(0)):
        mine = rows.loc_rows[rows.owner[rows.loc_rows] == index]
        ids = {tuple(rows.batch.input_ids[r][rows.batch.attention_mask[r].bool()].tolist()) for r in mine.tolist()}
        own = {tuple(tok(n.prompt)["input_ids"]) for n in request.neighborhood}
        assert len(ids) == 3, "three distinct neighbor prompts"
        assert all(any(i[: len(o)] == o for o in own) for i in ids), "each is one of the request's own neighbors"
    metrics = trainer.train_step()
    assert metrics["loc_kl"] > 0 and metrics["text_kl"] > 0


def test_resume_refuses_other_locality_text(tmp_path):
    model, tok, _ = tiny_model("llama")
    text = tmp_path / "corpus.txt"
    text.write_text("A first paragraph of unrelated text, long enough to hold a few windows of sixteen tokens. " * 4)
    requests = load_requests("demo")[:40]
    config = MENDTrainConfig(layers=(-1,), rank=8, steps=1, batch_size=2, loc_corpus=str(text), loc_text_rows=2,
                             loc_text_tokens=16, autocast=None)
    train, held = split_requests(requests, config.held_out, config.seed)
    MENDTrainer(model, tok, train, held, config, model_name="tiny", data_name="demo").train(tmp_path / "ckpt")
    text.write_text("Another text altogether, also long enough to hold a few windows of sixteen tokens each. " * 4)
    trainer = MENDTrainer(model, tok, train, held, config, model_name="tiny", data_name="demo")
    with pytest.raises(ConfigError, match="locality text differs.*loc_corpus"):
        trainer.restore(load_checkpoint(tmp_path / "ckpt", optimizer=True))


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"loc_text_share": 1.5}, "loc_text_share"),
        ({"loc_text_share": -0.1}, "loc_text_share"),
        ({"loc_text_rows": -1}, "loc_text_rows"),
        ({"loc_text_rows": 0}, "loc_text_rows"),  # the default share 0.5 needs text rows
        ({"loc_text_share": 0.0}, "loc_text_rows"),  # the default 8 rows would not count
        ({"loc_text_tokens": 1}, "loc_text_tokens"),
        ({"loc_corpus": " "}, "loc_corpus"),
        ({"loc_weight": -1.0}, "loc_weight"),
        ({"loc_neighbor_rows": 0}, "loc_neighbor_rows"),
        ({"loc_divergence": "jensen"}, "loc_divergence"),
        ({"target_lift_weight": -0.5}, "target_lift_weight"),
    ],
)
def test_bad_locality_settings_are_errors_naming_the_field(settings, field):
    with pytest.raises(ConfigError, match=rf"MENDTrainConfig\.{field}:"):
        MENDTrainConfig(**settings)
    MENDTrainConfig(loc_text_share=0.0, loc_text_rows=0)  # neighbor prompts only
    MENDTrainConfig(loc_text_share=1.0)  # unrelated text only


def test_checkpoints_from_before_the_text_rows_read_as_neighbor_prompts_only():
    from editscope.editors.mend.train_config import saved_config

    old = {k: v for k, v in to_dict(MENDTrainConfig()).items() if not k.startswith("loc_text") and k != "loc_corpus"}
    config = MENDTrainConfig.from_mapping(saved_config({"config": old}))
    assert config.loc_text_share == 0.0 and config.loc_text_rows == 0 and config.rank == MENDTrainConfig().rank
    newer = {k: v for k, v in to_dict(MENDTrainConfig(target_lift_weight=0.3)).items() if k not in ("loc_divergence", "target_lift_weight")}
    config = MENDTrainConfig.from_mapping(saved_config({"config": newer}))  # saved before the divergence and the lift term
    assert config.loc_divergence == "forward" and config.target_lift_weight == 0.0 and config.loc_text_share == MENDTrainConfig().loc_text_share


# -- data split --------------------------------------------------------------------------------
def test_split_is_deterministic_exact_and_order_free():
    requests = load_requests("demo")
    train, held = split_requests(requests, 0.2, 0)
    assert len(held) == round(0.2 * len(requests)) and len(train) + len(held) == len(requests)
    assert not {r.id for r in train} & {r.id for r in held}
    train2, held2 = split_requests(list(reversed(requests)), 0.2, 0)
    assert {r.id for r in held2} == {r.id for r in held}
    assert {r.id for r in split_requests(requests, 0.2, 1)[1]} != {r.id for r in held}


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_train_resume_info_and_run(tiny_folder, tmp_path, capsys):
    out = tmp_path / "mend"
    common = ["mend", "train", "--model", str(tiny_folder), "--out", str(out), "--device", "cpu",
              "--set", "layers=[-1]", "--set", "rank=8", "--set", "batch_size=2", "--set", "autocast=null",
              "--set", "checkpoint_every=2"]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "3"]) == 2  # a checkpoint is there: resume or overwrite
    assert "--resume to continue" in capsys.readouterr().err
    assert main(["mend", "train", "--out", str(out), "--device", "cpu", "--steps", "4", "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert summary["step"] == 4 and summary["config"]["rank"] == 8
    assert main(["mend", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 4 and info["held_out"] == 110
    run_dir = tmp_path / "run"
    code = main(["run", "--model", str(tiny_folder), "--mend-checkpoint", str(out), "--data", str(out / "held_out.jsonl"),
                 "--edits", "4", "--batch-size", "2", "--every", "2", "--instruments", "weights", "--out", str(run_dir)])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["edits"] for r in records] == [0, 2, 4]
    assert main(["run", "--editor", "ft", "--mend-checkpoint", str(out), "--out", str(tmp_path / "x")]) == 2


def test_learning_rate_schedule_is_a_cosine_to_the_final_fraction():
    from editscope.editors.mend.training import lr_factor

    assert lr_factor(0, 100, 0.1) == 1.0 and abs(lr_factor(100, 100, 0.1) - 0.1) < 1e-12
    assert abs(lr_factor(50, 100, 0.1) - 0.55) < 1e-12 and lr_factor(70, 100, 1.0) == 1.0

"""z* (``linalg.values.compute_z``): the batched optimization equals optimizing each request alone."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import pytest
import torch

from editscope.linalg.keys import compute_site_values, contextual_prompts
from editscope.linalg.positions import PositionedRows
from editscope.linalg.values import ZConfig, compute_z
from editscope.linalg.zpass import CachedPrefix, FullRows, pack_suffixes, prefix_trie, z_pass
from editscope.models import tiny_model
from editscope.types import EditRequest

REQUESTS = [
    EditRequest(id="a", prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(id="b", prompt="{} plays the", subject="Yo-Yo Ma", target_new="trumpet and drums", target_true="cello"),
    EditRequest(id="c", prompt="The mother tongue of {} is", subject="Danielle Darrieux", target_new="English", target_true="French"),
]
TEMPLATES = ["{}", "Some words. {}"]


def staggered_stop(model, tok, spec, layer, site="residual") -> float:
    """A loss threshold that the requests cross at different steps: the median NLL after 4 steps
    (the NLLs fall slowly on a tiny random model, at different rates)."""
    probe = compute_z(model, tok, spec, layer, REQUESTS, TEMPLATES, ZConfig(steps=4, loss_stop=-1.0, autocast=None, weight_decay=1e-3), site=site)
    return sorted(probe.final_nll)[1] + 1e-4


@pytest.mark.parametrize("arch,site,layer", [("llama", "residual", 2), ("gpt2", "residual", 1), ("llama", "mlp_out", 1)])
@pytest.mark.parametrize("mpes", [False, True])
def test_batched_z_equals_each_request_alone(arch, site, layer, mpes, one_thread):
    model, tok, spec = tiny_model(arch)
    stop = staggered_stop(model, tok, spec, layer, site)
    config = ZConfig(steps=12, lr=0.5, loss_stop=stop, mpes=mpes, mpes_hits=2, autocast=None, weight_decay=1e-3)
    batched = compute_z(model, tok, spec, layer, REQUESTS, TEMPLATES, config, site=site)
    alone = [compute_z(model, tok, spec, layer, [r], TEMPLATES, config, site=site) for r in REQUESTS]
    if not mpes:  # with a random model target_new is never the argmax, so MPES runs every step
        assert len(set(batched.steps)) > 1, "requests should leave the batch at different steps"
    for i, single in enumerate(alone):
        assert batched.steps[i] == single.steps[0]
        torch.testing.assert_close(batched.h[:, i], single.h[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched.z[:, i], single.z[:, 0], rtol=1e-4, atol=1e-4)
        assert batched.final_nll[i] == pytest.approx(single.final_nll[0], rel=1e-4, abs=1e-4)


def test_a_batch_larger_than_a_group_runs_in_groups_with_the_same_result(monkeypatch, one_thread):
    """Past ``GROUP`` requests z* runs group after group: each request's z, h, steps and NLL are those of
    one pass over the whole batch, in the batch's order."""
    from editscope.linalg import values

    model, tok, spec = tiny_model("llama")
    config = ZConfig(steps=12, lr=0.5, loss_stop=staggered_stop(model, tok, spec, 2), autocast=None, weight_decay=1e-3)
    whole = compute_z(model, tok, spec, 2, REQUESTS, TEMPLATES, config)
    passes = []
    monkeypatch.setattr(values, "z_pass", lambda *a, **k: passes.append(len(a[5])) or z_pass(*a, **k))
    monkeypatch.setattr(values, "GROUP", 2)
    grouped = compute_z(model, tok, spec, 2, REQUESTS, TEMPLATES, config)
    assert passes == [2 * len(TEMPLATES) + 2, len(TEMPLATES) + 1]  # rows of requests a, b; then c
    assert grouped.steps == whole.steps and len(set(whole.steps)) > 1
    torch.testing.assert_close(grouped.h, whole.h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grouped.z, whole.z, rtol=1e-4, atol=1e-4)
    assert grouped.final_nll == pytest.approx(whole.final_nll, rel=1e-4, abs=1e-4)


def test_requests_stop_at_different_steps_and_h_is_the_unedited_site_value(one_thread):
    model, tok, spec = tiny_model("llama")
    config = ZConfig(steps=15, lr=0.5, loss_stop=staggered_stop(model, tok, spec, 2), autocast=None, weight_decay=1e-3)
    result = compute_z(model, tok, spec, 2, REQUESTS, TEMPLATES, config)
    assert len(set(result.steps)) > 1, "the test needs requests that leave the batch at different steps"
    torch.testing.assert_close(result.h, compute_site_values(model, tok, spec, 2, REQUESTS), rtol=1e-5, atol=1e-5)
    frozen = compute_z(model, tok, spec, 2, REQUESTS, TEMPLATES, replace(config, steps=min(result.steps) + 1))
    first = result.steps.index(min(result.steps))  # stopped first: its z no longer moves
    torch.testing.assert_close(result.z[:, first], frozen.z[:, first])


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F."""
    return float((a - b).norm() / b.norm())


PREFIX_TEMPLATES = ["{}", "Some words. {}", "A longer context of several words here. {}"]
SITES = [("llama", "residual", 2), ("llama", "mlp_out", 1), ("gpt2", "residual", 1), ("gpt2", "mlp_out", 0),
         ("gemma3", "residual", 2), ("gemma3", "mlp_out", 1)]


def one_step(pass_class, model, tok, spec, layer, site, requests, templates):
    """Site values, target NLLs, KL-row logits and the gradient on a fixed delta, from one pass of ``pass_class``."""
    n, t = len(requests), len(templates)
    prompts, ends = contextual_prompts(requests, templates)
    subjects = [r.subject for r in requests]
    path = spec.layer_path(layer) if site == "residual" else spec.module_path(layer, "mlp_out")
    with torch.no_grad():
        rows_pass = pass_class(model, spec, path, layer if site == "residual" else layer - 1, tok, prompts + subjects,
                               ends + [len(x) for x in subjects], [r.target_new for r in requests for _ in templates] + [None] * n)
    delta = torch.randn(n, spec.mlp_out_weight(model, layer).shape[0], generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    owner = torch.cat([torch.arange(n).repeat_interleave(t), torch.arange(n)])
    with contextlib.ExitStack() as stack:
        rows_pass.activate(stack, torch.arange(n * t + n), delta, owner)
        out = rows_pass.logits(n * t)
        token_lp = torch.log_softmax(out.target, -1).gather(1, out.target_ids[:, None]).squeeze(1)
        nll = torch.zeros(n * t).index_add(0, out.target_row, -token_lp)
        (nll.sum() + torch.log_softmax(out.kl, -1)[:, :7].sum()).backward()
    return rows_pass.site_values, nll.detach(), out.kl.detach(), delta.grad


@pytest.mark.parametrize("arch,site,layer", SITES)
def test_prefix_cache_pass_equals_whole_rows(arch, site, layer, one_thread):
    """One step on the suffixes over a cached prefix: the site values, losses, KL logits and the gradient
    on delta of the whole-row pass, to float32 rounding."""
    model, tok, spec = tiny_model(arch)
    cached = one_step(CachedPrefix, model, tok, spec, layer, site, REQUESTS, PREFIX_TEMPLATES)
    whole = one_step(FullRows, model, tok, spec, layer, site, REQUESTS, PREFIX_TEMPLATES)
    for name, a, b in zip(("site values", "nll", "kl logits", "gradient"), cached, whole):
        assert relative_difference(a, b) < 1e-6, name


@pytest.mark.parametrize("arch,site,layer", SITES)
@pytest.mark.parametrize("mpes", [False, True])
def test_prefix_cache_z_equals_whole_rows(arch, site, layer, mpes, one_thread):
    """z* with the prefix cache equals whole-row z* in float32: same stopping steps, same NLLs to 1e-5
    relative, z to 1e-4 relative. (z differs more than one pass does because Adam's first steps move
    each coordinate by about ``lr * sign(gradient)``: coordinates whose gradient is near 0 follow the
    rounding. The same optimization in whole rows with another summation order moves them too.)"""
    model, tok, spec = tiny_model(arch)
    stop = staggered_stop(model, tok, spec, layer, site)
    config = ZConfig(steps=10, lr=0.5, loss_stop=stop, mpes=mpes, mpes_hits=2, autocast=None, weight_decay=1e-3, kl_factor=0.5)
    cached = compute_z(model, tok, spec, layer, REQUESTS, PREFIX_TEMPLATES, config, site=site)
    whole = compute_z(model, tok, spec, layer, REQUESTS, PREFIX_TEMPLATES, replace(config, prefix_cache=False), site=site)
    assert cached.steps == whole.steps
    assert relative_difference(cached.h, whole.h) < 1e-6
    assert relative_difference(cached.z, whole.z) < 1e-4
    assert cached.final_nll == pytest.approx(whole.final_nll, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_cache_pass_with_eager_attention(arch, one_thread):
    """The packed masks come from transformers' mask factory, so they take each attention
    implementation's form: here eager's additive float mask instead of SDPA's boolean one."""
    model, tok, spec = tiny_model(arch)
    model.set_attn_implementation("eager")
    cached = one_step(CachedPrefix, model, tok, spec, 2, "residual", REQUESTS, PREFIX_TEMPLATES)
    whole = one_step(FullRows, model, tok, spec, 2, "residual", REQUESTS, PREFIX_TEMPLATES)
    for name, a, b in zip(("site values", "nll", "kl logits", "gradient"), cached, whole):
        assert relative_difference(a, b) < 1e-6, name


def test_prefix_trie_shares_prefixes_and_packs_suffixes():
    """Rows sharing their first tokens share trie nodes; each packed suffix token sees exactly its own
    row's prefix nodes and its row's earlier suffix tokens."""
    rows = PositionedRows(tokens=[[1, 2, 3, 9, 8], [1, 5, 4, 9], [5, 6]], where=[2, 2, 0], targets=[[8, 7], [9, 6], []],
                          prompt_lengths=[4, 3, 2])
    trie = prefix_trie([t[:w] for t, w in zip(rows.tokens, rows.where)])
    assert trie.tokens.tolist() == [1, 2, 5] and trie.depth.tolist() == [0, 1, 1]  # token 1 shared; row 2 has no prefix
    assert trie.last == (1, 2, -1)
    packed = pack_suffixes(rows, trie, [0, 1, 2], torch.device("cpu"))
    assert packed.ids.tolist() == [[3, 9, 8, 4, 9, 5, 6]] and packed.positions.tolist() == [[2, 3, 4, 2, 3, 0, 1]]
    assert packed.starts.tolist() == [0, 3, 5] and packed.last_index.tolist() == [2, 4, 6]
    # row 0's prompt is 4 tokens: its target token 0 is predicted at prompt position 3 = its suffix index 1
    assert packed.target_index.tolist() == [1, 2, 3, 4] and packed.target_row.tolist() == [0, 0, 1, 1]
    sees = packed.sees.int().tolist()
    assert sees[1] == [1, 1, 0, 1, 1, 0, 0, 0, 0, 0]  # row 0's 2nd suffix token: nodes 0, 1 and its suffix tokens 0-1
    assert sees[3] == [1, 0, 1, 0, 0, 0, 1, 0, 0, 0]  # row 1's first suffix token: nodes 0, 2 and itself
    assert sees[6] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]  # row 2: no prefix nodes
    partial = pack_suffixes(rows, trie, [1], torch.device("cpu"))  # a request that stays in the batch alone
    assert partial.ids.tolist() == [[4, 9]] and partial.target_row.tolist() == [0, 0] and partial.target_index.tolist() == [0, 1]


def test_prefix_cache_handles_rows_without_a_prefix(one_thread):
    """GPT-2 adds no BOS token: a one-token subject at the start of a bare prompt leaves its row no prefix
    (all of a batch's rows, with the bare template only; some of them, with a prefixed one)."""
    model, tok, spec = tiny_model("gpt2")
    request = EditRequest(id="d", prompt="{} is the capital of", subject="A", target_new="Italy", target_true="France")
    assert len(tok(request.subject)["input_ids"]) == 1
    for requests, templates in (([request], ["{}"]), ([request, REQUESTS[0]], TEMPLATES)):
        cached = one_step(CachedPrefix, model, tok, spec, 1, "residual", requests, templates)
        whole = one_step(FullRows, model, tok, spec, 1, "residual", requests, templates)
        for name, a, b in zip(("site values", "nll", "kl logits", "gradient"), cached, whole):
            assert torch.isfinite(a).all(), name
            assert relative_difference(a, b) < 1e-6, name


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_packed_keys_equal_whole_prompts(arch, one_thread):
    """Keys from the prefix trie of the prompts cut after the subject equal keys read from whole
    left-padded prompts (several layers in one pass)."""
    from editscope.linalg.keys import compute_keys

    model, tok, spec = tiny_model(arch)
    layers = [0, 1, 2]
    packed = compute_keys(model, tok, spec, layers, REQUESTS, PREFIX_TEMPLATES)
    whole = compute_keys(model, tok, spec, layers, REQUESTS, PREFIX_TEMPLATES, packed=False)
    for layer in layers:
        assert packed[layer].shape == (spec.mlp_out_weight(model, layer).shape[1], len(REQUESTS))
        assert relative_difference(packed[layer], whole[layer]) < 1e-6, layer


def test_stop_rule_counts_hits_keeps_the_loss_stop_and_caps_optimizer_steps():
    """The reference ``compute_z`` rules, where the old ones gave other stopping steps."""
    from editscope.linalg.values import stop_rule

    def run(hit_pattern, losses, config):
        hits = 0
        for step, (hit, loss) in enumerate(zip(hit_pattern, losses)):
            hits, done = stop_rule(hits, hit, loss, step, config)
            if done:
                return step
        return None

    mpes = ZConfig(steps=10, mpes=True, mpes_hits=3)
    # hits need not be consecutive: the 3rd hit (step 4) stops it; a countdown from the first hit stopped at step 3
    assert run([True, False, True, False, True, True], [9.0] * 6, mpes) == 4
    # MPES keeps the total-loss stop (the old MPES dropped it)
    assert run([False, False], [9.0, 0.01], mpes) == 1
    # at most steps - 1 optimizer steps: the last pass stops before its step
    assert run([False] * 10, [9.0] * 10, ZConfig(steps=10)) == 9
    assert run([True] * 10, [0.049], ZConfig(steps=10, loss_stop=5e-2)) == 0  # the loss is the total, checked at once


def test_mpes_skips_the_bare_prompt_and_kl_is_edited_against_unedited():
    from editscope.linalg.values import kl_divergence, mpes_checked

    assert mpes_checked(6).tolist() == [False, True, True, True, True, True] and mpes_checked(1).tolist() == [True]
    p, q = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.9, 0.1]).log()
    assert float(kl_divergence(p, q)) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))  # 0.511
    assert float(kl_divergence(q, p)) == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2))  # 0.368: the old direction


def test_z_takes_at_most_steps_minus_one_optimizer_steps(one_thread):
    model, tok, spec = tiny_model("llama")
    once = compute_z(model, tok, spec, 2, REQUESTS[:1], TEMPLATES, ZConfig(steps=1, loss_stop=-1.0, autocast=None))
    assert once.steps == (0,)
    torch.testing.assert_close(once.z, once.h)  # one pass, no step: z* = h
    three = compute_z(model, tok, spec, 2, REQUESTS[:1], TEMPLATES, ZConfig(steps=3, loss_stop=-1.0, autocast=None))
    assert three.steps == (2,) and not torch.allclose(three.z, three.h)


def test_keys_average_the_bare_prompt_against_the_prefixed_group(one_thread):
    """MEMIT's compute_ks: k = 1/2 k_bare + 1/2 mean(k_prefixed) (the old flat mean gave k_bare 1/T)."""
    from editscope.linalg.keys import compute_keys, template_weights

    assert template_weights(6, "groups").tolist() == pytest.approx([0.5] + [0.1] * 5)
    assert template_weights(6, "uniform").tolist() == pytest.approx([1 / 6] * 6)
    model, tok, spec = tiny_model("llama")
    one = {t: compute_keys(model, tok, spec, [1], REQUESTS, (t,))[1] for t in PREFIX_TEMPLATES}
    grouped = compute_keys(model, tok, spec, [1], REQUESTS, PREFIX_TEMPLATES)[1]
    bare, prefixed = one[PREFIX_TEMPLATES[0]], [one[t] for t in PREFIX_TEMPLATES[1:]]
    torch.testing.assert_close(grouped, 0.5 * bare + 0.5 * sum(prefixed) / len(prefixed), rtol=1e-5, atol=1e-6)
    flat = (bare + sum(prefixed)) / len(PREFIX_TEMPLATES)
    assert relative_difference(grouped, flat) > 1e-3
    uniform = compute_keys(model, tok, spec, [1], REQUESTS, PREFIX_TEMPLATES, average="uniform")[1]
    torch.testing.assert_close(uniform, flat, rtol=1e-5, atol=1e-6)


def test_a_batch_splits_into_the_fewest_groups_of_near_equal_size():
    """100 requests run as ten groups of 10 (as costly per request as a batch of 10), not 16s and a 4."""
    from editscope.linalg.values import balanced_groups

    assert [len(g) for g in balanced_groups(100, 10)] == [10] * 10
    assert [len(g) for g in balanced_groups(100, 16)] == [14, 15, 14, 14, 14, 15, 14]
    assert [len(g) for g in balanced_groups(17, 10)] == [8, 9]
    assert balanced_groups(7, 10) == [range(0, 7)]
    groups = balanced_groups(33, 10)
    assert groups[0].start == 0 and groups[-1].stop == 33 and all(a.stop == b.start for a, b in zip(groups, groups[1:]))

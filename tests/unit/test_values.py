"""z* (``linalg.values.compute_z``): the batched optimization equals optimizing each request alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from editscope.linalg.keys import compute_site_values
from editscope.linalg.values import ZConfig, compute_z
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
    config = ZConfig(steps=12, lr=0.5, loss_stop=stop, mpes=mpes, mpes_extra_steps=1, autocast=None, weight_decay=1e-3)
    batched = compute_z(model, tok, spec, layer, REQUESTS, TEMPLATES, config, site=site)
    alone = [compute_z(model, tok, spec, layer, [r], TEMPLATES, config, site=site) for r in REQUESTS]
    if not mpes:  # with a random model target_new is never the argmax, so MPES runs every step
        assert len(set(batched.steps)) > 1, "requests should leave the batch at different steps"
    for i, single in enumerate(alone):
        assert batched.steps[i] == single.steps[0]
        torch.testing.assert_close(batched.h[:, i], single.h[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched.z[:, i], single.z[:, 0], rtol=1e-4, atol=1e-4)
        assert batched.final_nll[i] == pytest.approx(single.final_nll[0], rel=1e-4, abs=1e-4)


def test_requests_stop_at_different_steps_and_h_is_the_unedited_site_value(one_thread):
    model, tok, spec = tiny_model("llama")
    config = ZConfig(steps=15, lr=0.5, loss_stop=staggered_stop(model, tok, spec, 2), autocast=None, weight_decay=1e-3)
    result = compute_z(model, tok, spec, 2, REQUESTS, TEMPLATES, config)
    assert len(set(result.steps)) > 1, "the test needs requests that leave the batch at different steps"
    torch.testing.assert_close(result.h, compute_site_values(model, tok, spec, 2, REQUESTS), rtol=1e-5, atol=1e-5)
    frozen = compute_z(model, tok, spec, 2, REQUESTS, TEMPLATES, replace(config, steps=min(result.steps) + 1))
    first = result.steps.index(min(result.steps))  # stopped first: its z no longer moves
    torch.testing.assert_close(result.z[:, first], frozen.z[:, first])

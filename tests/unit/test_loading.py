import json
import time

import pytest

from editscope.errors import ModelLoadError, UnsupportedArchitectureError
from editscope.models import load, model_fingerprint, tiny_model


def test_local_folder_round_trip(tmp_path):
    model, tok, spec = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load(str(tmp_path))
    assert loaded.spec is spec
    assert model_fingerprint(loaded.model) == model_fingerprint(model)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token is not None


def test_fingerprint_sees_weight_changes():
    model, _, spec = tiny_model("llama")
    before = model_fingerprint(model)
    model.get_parameter(spec.weight_name(1)).data.add_(1e-3)
    assert model_fingerprint(model) != before


def test_unsupported_architecture_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(UnsupportedArchitectureError, match="supported: .*llama"):
        load(str(tmp_path))


def test_missing_folder_and_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(str(tmp_path / "nothing"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(str(tmp_path))


def test_hub_id_fails_fast_when_hub_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="not reachable") as info:
        load("some-org/some-model")
    assert "smollm2-135m" in str(info.value)
    assert time.monotonic() - start < 30  # a generous bound: the point is "does not hang"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unembedding_sees_contiguous_inputs_and_the_same_logits(arch, tmp_path):
    import torch

    from editscope.models.hooks import contiguous_head, hooks

    model, tok, _ = tiny_model(arch)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for lm in (model, load(str(tmp_path)).model):
        seen = []
        head_path = next(name for name, module in lm.named_modules() if module is lm.get_output_embeddings())
        grab = lambda module, args, kwargs, output: seen.append(args[0].is_contiguous())  # noqa: E731
        ids = torch.randint(3, 100, (3, 9))
        with torch.no_grad(), hooks(lm, post={head_path: grab}):
            kept = lm(input_ids=ids, logits_to_keep=4).logits
        full = lm(input_ids=ids).logits
        assert seen == [True]
        torch.testing.assert_close(kept, full[:, -4:], rtol=1e-5, atol=1e-5)
        contiguous_head(lm)  # idempotent: one hook
        assert len(lm.get_output_embeddings()._forward_pre_hooks) == 1

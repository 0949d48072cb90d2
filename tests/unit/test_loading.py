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

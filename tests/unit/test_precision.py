"""The precision policy: ``auto`` is bf16 only where the device runs it natively, and every result records it."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml

from editscope import precision
from editscope.cli import main
from editscope.precision import AUTO, OVERRIDE_ENV, autocast, detect, normalize, precision_record, resolve


@pytest.fixture
def no_flags(monkeypatch, tmp_path):
    """A CPU whose flags show neither AVX-512 BF16 nor AMX (the probe decides), with an empty probe cache."""
    monkeypatch.setenv("EDITSCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(precision, "_cpu_flag", lambda name: False)
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)


def fake_probe(monkeypatch, bf16_s: float, fp32_s: float) -> list[int]:
    calls: list[int] = []

    def measure(device, repeats=2):
        calls.append(1)
        return {"fp32_s": fp32_s, "bf16_s": bf16_s, "shape": list(precision.PROBE_SHAPE), "threads": 1}

    monkeypatch.setattr(precision, "measure_bf16", measure)
    return calls


def test_settings_normalize_to_a_dtype_name_auto_or_none():
    assert normalize("auto") == AUTO
    assert normalize("bf16") == normalize("BFloat16") == "bfloat16"
    assert normalize("fp16") == "float16"
    assert normalize(None) is normalize("fp32") is normalize("float32") is normalize("none") is None
    with pytest.raises(ValueError, match=r"z.autocast: unknown precision 'bf17'"):
        normalize("bf17", "z.autocast")


def test_auto_follows_a_measured_probe_cached_per_cpu(no_flags, monkeypatch):
    calls = fake_probe(monkeypatch, bf16_s=0.6, fp32_s=0.015)  # the AVX2 fallback: 40x slower
    assert resolve(AUTO, "cpu") is None
    hardware = detect("cpu")
    assert hardware.native_bf16 is False and hardware.decided_by == "probe-cache"  # the first call measured, this one read it
    assert len(calls) == 1
    assert hardware.probe["bf16_s"] == 0.6


def test_auto_is_bf16_where_the_probe_finds_it_faster(no_flags, monkeypatch):
    fake_probe(monkeypatch, bf16_s=0.004, fp32_s=0.008)
    assert resolve(AUTO, "cpu") == "bfloat16"


def test_cpu_flags_decide_without_a_probe(monkeypatch):
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(precision, "_cpu_flag", lambda name: name == "_is_avx512_bf16_supported")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    calls = fake_probe(monkeypatch, bf16_s=1.0, fp32_s=0.001)
    assert detect("cpu").decided_by == "flags"
    assert resolve(AUTO, "cpu") == "bfloat16"
    assert calls == []


def test_flags_do_not_decide_when_torch_is_capped_below_avx512(monkeypatch, tmp_path):
    """ATEN_CPU_CAPABILITY=avx2 on an AVX-512 BF16 CPU (the AVX2 path emulated): the probe measures what runs."""
    monkeypatch.setenv("EDITSCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(precision, "_cpu_flag", lambda name: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    calls = fake_probe(monkeypatch, bf16_s=0.6, fp32_s=0.015)
    hardware = detect("cpu")
    assert (hardware.decided_by, hardware.native_bf16, hardware.avx512_bf16) == ("probe", False, True) and len(calls) == 1
    assert resolve(AUTO, "cpu") is None


def test_an_accelerator_runtime_answers_for_its_device(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("the runtime's answer should decide, not a probe")

    monkeypatch.setattr(precision, "measure_bf16", no_probe)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s and not including_emulation)
        hardware = detect("cuda")
        assert (hardware.device, hardware.name, hardware.decided_by, hardware.native_bf16) == ("cuda", "Fake GPU", "cuda", supported)


def test_override_and_explicit_settings(no_flags, monkeypatch, caplog):
    fake_probe(monkeypatch, bf16_s=0.6, fp32_s=0.015)
    monkeypatch.setenv(OVERRIDE_ENV, "bf16")
    assert resolve(AUTO, "cpu") == "bfloat16"
    monkeypatch.setenv(OVERRIDE_ENV, "fp32")
    assert resolve(AUTO, "cpu") is None
    assert resolve("bfloat16", "cpu") == "bfloat16"  # an explicit setting wins over the override ...
    assert "no native bf16" in caplog.text  # ... with a warning where the hardware lacks it
    monkeypatch.setenv(OVERRIDE_ENV, "bf17")
    with pytest.raises(ValueError, match=OVERRIDE_ENV):
        resolve(AUTO, "cpu")


def test_autocast_context_follows_the_resolution(no_flags, monkeypatch):
    fake_probe(monkeypatch, bf16_s=0.6, fp32_s=0.015)
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), AUTO):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_env_command_reports_capability_and_resolution(no_flags, monkeypatch, capsys):
    fake_probe(monkeypatch, bf16_s=0.6, fp32_s=0.015)
    assert main(["env", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)["devices"][0]
    assert cpu["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["native_bf16"] is False and cpu["auto"] == "float32"
    assert main(["env"]) == 0
    assert "float32" in capsys.readouterr().out


def test_run_config_records_the_precision_and_resume_warns_when_it_differs(tiny_folder, tmp_path, caplog, one_thread):
    from tests.unit.test_runs import tiny_config

    from editscope.runs import execute

    out = tmp_path / "run"
    config = tiny_config(tiny_folder, out, edits=10, every=5)
    execute(config)
    record = yaml.safe_load((out / "config.yaml").read_text())["resolved"]["precision"]
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["auto"] == precision_record("cpu")["auto"]
    state = out / "state" / "state.json"
    saved = json.loads(state.read_text())
    assert saved["progress"]["precision_auto"] == record["auto"]
    saved["progress"]["precision_auto"] = "float16"  # as if saved on a machine that resolves auto otherwise
    saved["progress"]["edits"] = 5
    state.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        execute(config, resume=True)
    assert "precision auto = float16" in caplog.text

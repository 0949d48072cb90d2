"""The precision policy: reduced precision only where the hardware runs it natively.

Every reduced-precision setting of editscope (z*, the statistics pass, downstream and perplexity
evaluation, MEND training, post-training) takes one of:

* ``"auto"`` (the default): ``bfloat16`` autocast where the device multiplies bf16 matrices
  natively, the model's own precision otherwise;
* a dtype name (``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"``): that autocast, with a
  warning where the device has no native bf16 (on an AVX2-only CPU a bf16 matrix product takes
  PyTorch's generic fallback: measured 40x slower than float32 for 256x576x1536);
* ``None``, ``"float32"``/``"fp32"``: no autocast.

``auto`` resolves by the device: an accelerator whose torch runtime answers ``is_bf16_supported``
(``torch.cuda``, ``torch.xpu``) by that answer without emulation; a CPU whose flags include
AVX-512 BF16 or AMX tiles by those flags, where torch dispatches its AVX-512 kernels
(``ATEN_CPU_CAPABILITY`` can cap that, e.g. to emulate an AVX2-only CPU); any other device (an AVX2 CPU, an ARM CPU, MPS) by a
measured probe -- a bf16 matrix product against a float32
one, bf16 native when it is faster -- run once and cached per device kind, CPU model and torch
version (and CPU flags) under ``$EDITSCOPE_HOME/precision/``. ``EDITSCOPE_PRECISION=fp32`` (or ``bf16``) makes
every ``auto`` resolve to that instead, e.g. to measure the float32 path on a bf16 machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from editscope.storage import atomic_write_text, cache_home

logger = logging.getLogger(__name__)

AUTO = "auto"
OVERRIDE_ENV = "EDITSCOPE_PRECISION"
PROBE_FORMAT = 1
PROBE_SHAPE = (256, 576, 1536)  # m, k, n: a batch of tokens through a small model's MLP
ALIASES: dict[str, str | None] = {
    "auto": AUTO, "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
    "half": "float16", "float32": None, "fp32": None, "none": None, "null": None,
}


def normalize(setting: str | None, where: str = "precision") -> str | None:
    """``"auto"``, a canonical dtype name (``"bfloat16"``, ``"float16"``) or ``None`` (no autocast).

    Raises ``ValueError`` naming ``where`` for anything else.
    """
    if setting is None:
        return None
    key = str(setting).strip().lower()
    if key not in ALIASES:
        raise ValueError(f"{where}: unknown precision {setting!r} (use auto, bfloat16, float16 or null)")
    return ALIASES[key]


@dataclass(frozen=True)
class Hardware:
    """What a device does in reduced precision, and how that was decided.

    Attributes:
        device: the device type (``cpu``, ``cuda``, ...).
        name: the CPU model or accelerator name.
        cpu_capability: ``torch.backends.cpu.get_cpu_capability()`` (``AVX2``, ``AVX512``, ...).
        avx512_bf16: the CPU flags include AVX-512 BF16.
        amx: the CPU has AMX tiles.
        native_bf16: bf16 matrix products run natively (not through a generic fallback).
        decided_by: ``flags`` (CPU flags), the device type (its torch runtime, e.g. ``cuda``), ``probe`` (measured now)
            or ``probe-cache`` (measured earlier on this CPU model with this torch).
        probe: the probe's timings (``bf16_s``, ``fp32_s``, ``shape``) where one ran.
    """

    device: str
    name: str
    cpu_capability: str
    avx512_bf16: bool
    amx: bool
    native_bf16: bool
    decided_by: str
    probe: dict[str, Any] | None = None


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The CPU's feature flags line from ``/proc/cpuinfo`` (empty where there is none): machines sold
    under one model name (``AMD EPYC``) differ in them."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("flags", "features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    return ""


def _cpu_flag(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if callable(probe) else False


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        with contextlib.suppress(Exception):
            torch.accelerator.synchronize(device)


@torch.no_grad()
def measure_bf16(device: torch.device, repeats: int = 2) -> dict[str, Any]:
    """Seconds of one bf16 and one float32 ``PROBE_SHAPE`` matrix product on ``device`` (best of ``repeats``)."""
    m, k, n = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    timings = {}
    for label, dtype in (("fp32_s", torch.float32), ("bf16_s", torch.bfloat16)):
        x, y = a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)
        x @ y  # warm-up
        _synchronize(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            _synchronize(device)
            best = min(best, time.perf_counter() - start)
        timings[label] = best
    return {**timings, "shape": list(PROBE_SHAPE), "threads": torch.get_num_threads()}


def _probe_path(device: torch.device, name: str):
    flags = cpu_flags() if device.type == "cpu" else ""
    key = f"{device.type}|{name}|{torch.backends.cpu.get_cpu_capability()}|{flags}|{torch.__version__}|{PROBE_FORMAT}"
    return cache_home() / "precision" / f"probe-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _probed(device: torch.device, name: str) -> tuple[bool, str, dict[str, Any]]:
    """Native bf16 by the measured probe, read from its cache where it ran before."""
    path = _probe_path(device, name)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(path.read_text(encoding="utf-8"))
        return bool(cached["native_bf16"]), "probe-cache", dict(cached["probe"])
    probe = measure_bf16(device)
    native = probe["bf16_s"] < probe["fp32_s"]
    logger.info("precision probe on %s (%s): bf16 %.4f s, fp32 %.4f s -> %s", device.type, name, probe["bf16_s"], probe["fp32_s"],
                "native bf16" if native else "no native bf16")
    record = {"device": device.type, "name": name, "torch": str(torch.__version__), "native_bf16": native, "probe": probe}
    with contextlib.suppress(OSError):
        atomic_write_text(path, json.dumps(record, indent=2))
    return native, "probe", probe


def detect(device: torch.device | str = "cpu") -> Hardware:
    """What ``device`` does in bf16 (see :class:`Hardware`); a probe runs at most once per CPU model and torch."""
    device = torch.device(device)
    capability = torch.backends.cpu.get_cpu_capability()
    avx512_bf16, amx = _cpu_flag("_is_avx512_bf16_supported"), _cpu_flag("_is_amx_tile_supported")
    runtime = getattr(torch, device.type, None) if device.type != "cpu" else None
    if callable(getattr(runtime, "is_bf16_supported", None)) and callable(getattr(runtime, "get_device_name", None)):
        name = runtime.get_device_name(device)
        native = bool(runtime.is_bf16_supported(including_emulation=False))
        return Hardware(device.type, name, capability, avx512_bf16, amx, native, device.type)
    if device.type == "cpu":
        name = cpu_name()
        if (avx512_bf16 or amx) and capability.startswith("AVX512"):  # torch capped below AVX-512 (ATEN_CPU_CAPABILITY): the probe decides
            return Hardware("cpu", name, capability, avx512_bf16, amx, True, "flags")
    else:
        name = device.type
    native, decided_by, probe = _probed(device, name)
    return Hardware(device.type, name, capability, avx512_bf16, amx, native, decided_by, probe)


def override() -> str | None:
    """``EDITSCOPE_PRECISION`` as a canonical name (``"bfloat16"``, ``None`` for fp32), or ``"auto"`` when unset."""
    value = os.environ.get(OVERRIDE_ENV, "").strip()
    return normalize(value, OVERRIDE_ENV) if value else AUTO


def resolve(setting: str | None, device: torch.device | str = "cpu", where: str = "precision") -> str | None:
    """The autocast dtype name ``setting`` stands for on ``device`` (``None``: the model's own precision).

    ``"auto"`` follows ``EDITSCOPE_PRECISION`` where it is set, else the hardware (module
    docstring). An explicit bf16 on a device without native bf16 is kept, with a warning.
    """
    wanted = normalize(setting, where)
    if wanted == AUTO:
        forced = override()
        if forced != AUTO:
            return forced
        return "bfloat16" if detect(device).native_bf16 else None
    if wanted == "bfloat16" and not detect(device).native_bf16:
        logger.warning("%s: bfloat16 asked for on %s, which has no native bf16 matrix products: expect it to run many "
                       "times slower than float32 (use auto)", where, torch.device(device).type)
    return wanted


def precision_record(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The record saved with every result: the hardware, the override and what ``auto`` resolves to."""
    device = torch.device(device)
    hardware = detect(device)
    auto = resolve(AUTO, device)
    return {
        **asdict(hardware),
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "override": os.environ.get(OVERRIDE_ENV) or None,
        "auto": auto or "float32",
    }


def autocast(device: torch.device, setting: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type for ``setting`` (a no-op where it stands for no autocast).

    ``"auto"`` is resolved here; callers that enter it at every step resolve once with
    :func:`resolve` (which also warns about an explicit bf16 on a device without it) and pass the result.
    """
    wanted = normalize(setting)
    dtype_name = resolve(AUTO, device) if wanted == AUTO else wanted
    if dtype_name is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype_name))


def differentiable_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """The attention kernel for passes that are differentiated: on CPU, PyTorch's math SDPA.

    CPU's flash-attention kernel is fast forward but its backward took about 10x its forward on
    the short sequences of an edit (SmolLM2, 70 rows of ~25 tokens): 60 ms against 6 ms a layer,
    a quarter of a z* step. With the math kernel a z* step ran 22% faster (same losses to bf16
    rounding). Other devices keep their default kernels.
    """
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the RNGs for the block (CPU and ``device``'s), restoring the caller's RNG state afterwards."""
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [], device_type=device.type):
        torch.manual_seed(seed)
        yield

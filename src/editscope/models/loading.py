"""``load(name_or_path)``: bundled names, local HF folders and hub ids -> model, tokenizer, spec."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from editscope.errors import ModelLoadError
from editscope.models.bundled import BUNDLED_MODELS, ensure_bundled
from editscope.models.hooks import contiguous_head
from editscope.models.placement import DeviceMap, place_model
from editscope.models.spec import ModelSpec, spec_for_config

logger = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class LoadedModel:
    """A loaded causal LM with its tokenizer, architecture spec and provenance.

    Attributes:
        model: the model, in eval mode, with gradients disabled on every parameter.
        tokenizer: its tokenizer, with a pad token set (the EOS token where it had none).
        spec: the architecture facts.
        name: what the user asked for (bundled name, folder or hub id).
        source: the folder the weights were read from, or the hub id.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    name: str
    source: str


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, endpoint
    except OSError as exc:
        return False, f"{endpoint} ({exc})"


def _finish(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, source: str) -> LoadedModel:
    spec = spec_for_config(model.config)
    model.eval()
    model.requires_grad_(False)
    contiguous_head(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, name=name, source=source)


def load_folder(folder: str | os.PathLike[str], *, dtype: torch.dtype | None = None, name: str | None = None) -> LoadedModel:
    """Load an HF model folder (config.json + weights + tokenizer)."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a model folder: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as exc:  # an unknown model_type, a malformed config.json
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{path}/config.json: transformers cannot read it ({detail})") from None
    spec_for_config(config)  # unsupported architectures fail before reading weights
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return _finish(model, tokenizer, name or str(path), str(path))


def load_hub(repo_id: str, *, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load from the hub cache, or the hub itself where it is reachable; fail fast otherwise."""
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):  # a complete snapshot in the local hub cache: no network at all
        return load_folder(Path(cached).parent, dtype=dtype, name=repo_id)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise ModelLoadError(f"{repo_id!r} is not in the local hub cache and HF_HUB_OFFLINE is set")
    reachable, where = _hub_reachable()
    if not reachable:
        raise ModelLoadError(
            f"{repo_id!r} is neither a bundled model ({', '.join(BUNDLED_MODELS.names())}) nor a local folder, "
            f"and the model hub is not reachable: {where}. Pass a local HF folder or a bundled name."
        )
    config = AutoConfig.from_pretrained(repo_id)
    spec_for_config(config)
    model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    return _finish(model, tokenizer, repo_id, repo_id)


def load(name_or_path: str, *, dtype: torch.dtype | None = None, device_map: DeviceMap | None = None) -> LoadedModel:
    """Load a bundled model by name, a local HF folder, or a hub id.

    Args:
        name_or_path: ``smollm2-135m`` / ``gemma3-270m``, a folder path, ``org/name``, or an editing run
            folder ``RUN`` / ``RUN@EDITS`` (its base model with the cumulative delta at that checkpoint added).
        dtype: parameter dtype; fp32 by default (the bundled weights are dequantized to fp32).
        device_map: where the modules go (see :mod:`editscope.models.placement`): a device
            (``"cuda:0"``), a strategy (``"auto"``) or ``{module path: device}``; ``None`` keeps the
            model on the CPU. The weights are read into CPU memory first, then moved.
    """
    start = time.perf_counter()
    from editscope.runs.export import edited_model, parse_run_ref  # a run folder is a model wherever one is taken

    run = parse_run_ref(name_or_path) if name_or_path not in BUNDLED_MODELS else None
    if run is not None:
        loaded = edited_model(run, dtype=dtype)
    elif name_or_path in BUNDLED_MODELS:
        loaded = load_folder(ensure_bundled(name_or_path), dtype=dtype, name=name_or_path)
    elif Path(name_or_path).expanduser().exists():
        loaded = load_folder(Path(name_or_path).expanduser(), dtype=dtype)
    elif name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path:
        raise ModelLoadError(f"model folder {name_or_path!r} does not exist")
    else:
        loaded = load_hub(name_or_path, dtype=dtype)
    if device_map is not None:
        place_model(loaded.model, device_map)
    logger.info("loaded %s (%s) in %.1f s", name_or_path, loaded.spec.name, time.perf_counter() - start)
    return loaded


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> the machine's accelerator where torch sees one, else the CPU; anything else as torch
    spells it (``cpu``, ``cuda:1``, ``mps``)."""
    if requested == "auto":
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        return accelerator if accelerator is not None else torch.device("cpu")
    try:
        return torch.device(requested)
    except RuntimeError as exc:
        raise ModelLoadError(f"device {requested!r}: {exc}") from None

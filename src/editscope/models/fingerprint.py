"""Content fingerprints of models, for cache keys and provenance records.

Hashing every weight of a multi-billion-parameter model would take minutes, so the
fingerprint hashes each parameter's name, shape, dtype and a fixed strided sample of its
values (plus the full config). Two models that differ anywhere in a sampled element, a shape
or the config get different fingerprints; edited weights (dense updates) always change the
sample.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

SAMPLES_PER_TENSOR = 4096
# Config entries that say where or with what a model was loaded, not what it is.
VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype"})


def _sample(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    if flat.numel() > SAMPLES_PER_TENSOR:
        step = flat.numel() // SAMPLES_PER_TENSOR
        flat = flat[::step][:SAMPLES_PER_TENSOR]
    return flat.to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """A 16-hex-digit fingerprint of ``model``'s config and weights (sampled)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        facts = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    for name, param in model.state_dict().items():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(_sample(param))
    return digest.hexdigest()[:16]

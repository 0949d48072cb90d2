"""Norm anchors' reference norm (arXiv 2602.02543; SasyaTitech/NAS ``util/vstar_stats.py``).

The reference is the mean norm of the MLP values v* = v0 + (z* - h) that the editor's own z*
optimization gives on the unedited model for ``anchor_samples`` requests (NAS: 1,000 random
MultiCounterFact requests), the top 5% dropped. It is computed once per model, settings and
resolved z* precision (``auto`` keyed by what it resolves to on this machine, as the statistics
are) and cached on disk, since on a CPU it costs as many z* optimizations as edits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import to_dict
from editscope.data import load_requests
from editscope.linalg.keys import bare_prompt_outputs
from editscope.linalg.restraints import anchor_reference
from editscope.linalg.values import compute_z
from editscope.models.fingerprint import model_fingerprint
from editscope.models.placement import input_device
from editscope.models.spec import ModelSpec
from editscope.precision import resolve
from editscope.storage import atomic_write_text, cache_home
from editscope.types import EditRequest

if TYPE_CHECKING:
    from editscope.editors.locate import LocateEditor

logger = logging.getLogger(__name__)

BATCH = 16
"""Requests per z* optimization while measuring the reference (a batch equals its requests alone)."""


def mlp_values(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec, layer: int,
               requests: Sequence[EditRequest]) -> Tensor:
    """v0: what block ``layer``'s MLP adds to the residual at each bare prompt's subject, ``[d_model, n]``
    (its output, or its normed output where the block norms it before the add)."""
    path = spec.module_path(layer, "mlp_out_norm" if spec.mlp_out_norm else "mlp_out")
    return bare_prompt_outputs(model, tokenizer, requests, [path])[path]


def anchor_requests(data: str, n: int, seed: int) -> list[EditRequest]:
    """``n`` requests of ``data`` in a seeded random order (all of them where it holds fewer)."""
    requests = load_requests(data)
    random.Random(f"anchor/{seed}").shuffle(requests)
    if len(requests) < n:
        logger.warning("norm anchors: %s holds %d requests, fewer than the %d asked for; using all", data, len(requests), n)
    return requests[:n]


def _cache_key(editor: LocateEditor, model: PreTrainedModel) -> str:
    c = editor.config
    z = {**to_dict(c.z), "autocast": resolve(c.z.autocast, input_device(model), "z.autocast")}  # what compute_z runs in
    facts: dict[str, Any] = {"model": model_fingerprint(model), "layer": max(c.layers), "z": z, "templates": list(editor._templates or ()),
                             "data": c.anchor_data, "samples": c.anchor_samples, "seed": c.seed, "format": 1}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def anchor_norm(editor: LocateEditor, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec) -> float:
    """The reference norm for ``editor`` on the unedited ``model`` (module docstring), from the cache where it was measured."""
    path = cache_home() / "anchors" / f"{_cache_key(editor, model)}.json"
    if path.is_file():
        try:
            return float(json.loads(path.read_text())["reference"])
        except (ValueError, KeyError, OSError):
            logger.warning("%s: unreadable anchor cache; measuring again", path)
    c = editor.config
    layer = max(c.layers)
    requests = anchor_requests(c.anchor_data, c.anchor_samples, c.seed)
    norms = []
    for start in range(0, len(requests), BATCH):
        batch = requests[start : start + BATCH]
        with torch.enable_grad():
            zres = compute_z(model, tokenizer, spec, layer, batch, editor._templates or ("{}",), c.z, site="residual")
        v0 = mlp_values(model, tokenizer, spec, layer, batch).to(zres.z.device)
        norms.append((v0 + zres.z - zres.h).norm(dim=0))
    reference = anchor_reference(torch.cat(norms))
    atomic_write_text(path, json.dumps({"reference": reference, "requests": len(requests)}))
    logger.info("norm anchors: reference norm %.3f from %d requests", reference, len(requests))
    return reference

"""Second-moment statistics C0 = E[k k^T] of the edited projections' inputs over a text corpus.

MEMIT (Meng et al. 2023, eq. 14: K0 K0^T estimated as lambda E[k k^T]) and its descendants need C0
for every edited layer. All layers come from ONE forward pass per chunk of text, stopped after the
deepest needed layer; per-chunk products are float32 matrix products accumulated in float64.
Results are cached on disk keyed by model fingerprint, layer, corpus fingerprint, sample count and
sequence length, written atomically with a checksum; a corrupt file is detected and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.data.corpora import TextCorpus
from editscope.models.fingerprint import model_fingerprint
from editscope.models.hooks import capture_inputs
from editscope.models.spec import ModelSpec
from editscope.precision import autocast as autocast_context
from editscope.storage import atomic_write_bytes, cache_home

logger = logging.getLogger(__name__)

# Bumped whenever what a cache entry means changes (e.g. how texts are cut into samples).
CACHE_FORMAT = 2


@dataclass
class SecondMoment:
    """Running sum of k k^T (float64) and the token count; mergeable across shards."""

    sum: Tensor
    count: int

    def update(self, keys: Tensor) -> None:
        """Add ``Float[Tensor, "tokens d"]`` keys."""
        keys = keys.float()
        self.sum += (keys.T @ keys).double()
        self.count += keys.shape[0]

    def merge(self, other: SecondMoment) -> SecondMoment:
        return SecondMoment(self.sum + other.sum, self.count + other.count)

    def mean(self) -> Tensor:
        """C0 = E[k k^T], ``Float64[Tensor, "d d"]``."""
        if self.count == 0:
            raise ValueError("no tokens accumulated")
        return self.sum / self.count


def token_chunks(
    tokenizer: PreTrainedTokenizerBase, corpus: TextCorpus, n_samples: int, seq_len: int
) -> list[list[int]]:
    """``n_samples`` token windows of at most ``seq_len`` tokens, in corpus order.

    Each document is cut into consecutive windows (a long article gives several samples; windows
    shorter than a quarter of ``seq_len`` are dropped unless the document is that short).
    """
    windows: list[list[int]] = []
    for text in corpus.texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        for start in range(0, len(ids), seq_len):
            window = ids[start : start + seq_len]
            if start == 0 or len(window) >= seq_len // 4:
                windows.append(window)
            if len(windows) == n_samples:
                return windows
    logger.warning("corpus gives %d windows of %d tokens, fewer than the %d asked for", len(windows), seq_len, n_samples)
    return windows


@torch.no_grad()
def collect_second_moments(
    model: PreTrainedModel,
    spec: ModelSpec,
    layers: Sequence[int],
    chunks: Sequence[Sequence[int]],
    *,
    batch_tokens: int = 4096,
    stop_early: bool = True,
    autocast: str | None = None,
) -> dict[int, SecondMoment]:
    """One pass over ``chunks`` (token id lists) accumulating E[k k^T] at every layer in ``layers``.

    With ``stop_early`` the forward pass ends after the deepest layer's projection has read its input.
    ``autocast`` (e.g. ``"bfloat16"``) runs the forward pass in reduced precision; the products are
    still float32 and the sums float64.
    """
    device = next(model.parameters()).device
    paths = {layer: spec.module_path(layer, "mlp_out") for layer in layers}
    d_in = {layer: int(spec.mlp_out_weight(model, layer).shape[1]) for layer in layers}
    moments = {layer: SecondMoment(torch.zeros(d_in[layer], d_in[layer], dtype=torch.float64, device=device), 0) for layer in layers}
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    start = 0
    while start < len(order):
        width = len(chunks[order[start]])
        rows = max(1, batch_tokens // max(width, 1))
        group = [chunks[i] for i in order[start : start + rows]]
        start += rows
        ids = torch.full((len(group), width), 0, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, seq in enumerate(group):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        stop = paths[max(layers)] if stop_early else None
        with autocast_context(device, autocast):
            captured = capture_inputs(model, list(paths.values()), stop, input_ids=ids, attention_mask=mask, use_cache=False)
        real = mask.bool()
        for layer, path in paths.items():
            moments[layer].update(captured[path][real])
    return moments


@torch.no_grad()
def collect_second_moments_per_layer(
    model: PreTrainedModel, spec: ModelSpec, layers: Sequence[int], chunks: Sequence[Sequence[int]]
) -> dict[int, SecondMoment]:
    """Reference: one full, untruncated pass per layer (slow; for tests and benchmarks)."""
    out = {}
    for layer in layers:
        out.update(collect_second_moments(model, spec, [layer], chunks, stop_early=False))
    return out


def _cache_path(fingerprint: str, param: str, corpus: TextCorpus, n_samples: int, seq_len: int, autocast: str | None) -> Path:
    key = f"{param}|{corpus.fingerprint}|{n_samples}|{seq_len}|{CACHE_FORMAT}|{autocast or 'model-dtype'}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_home() / "stats" / fingerprint / f"{param}.{digest}.safetensors"


def _read_cached(path: Path) -> SecondMoment | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        if hashlib.sha256(tensors["sum"].numpy().tobytes()).hexdigest() != meta["sha256"]:
            raise ValueError("checksum mismatch")
        return SecondMoment(tensors["sum"], int(meta["count"]))
    except Exception as exc:  # any corruption: recompute
        logger.warning("statistics cache %s is unreadable (%s); recomputing", path, exc)
        return None


def _write_cached(path: Path, moment: SecondMoment, info: dict[str, object]) -> None:
    total = moment.sum.cpu().contiguous()
    data = save({"sum": total})
    digest = hashlib.sha256(total.numpy().tobytes()).hexdigest()
    atomic_write_bytes(path.with_suffix(".json"), json.dumps({**info, "count": moment.count, "sha256": digest}, indent=2).encode())
    atomic_write_bytes(path, data)


def second_moments(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    layers: Sequence[int],
    corpus: TextCorpus,
    *,
    n_samples: int,
    seq_len: int,
    use_cache: bool = True,
    fingerprint: str | None = None,
    autocast: str | None = None,
) -> dict[int, Tensor]:
    """C0 per layer (``Float64[Tensor, "d_mlp d_mlp"]``), from the disk cache where possible.

    ``fingerprint`` names the model the statistics belong to (default: this model's); a
    sequential editor passes the unedited model's, so a resumed run reads the same C0.
    """
    fingerprint = fingerprint or model_fingerprint(model)
    device = next(model.parameters()).device
    result: dict[int, Tensor] = {}
    missing = []
    for layer in layers:
        path = _cache_path(fingerprint, spec.weight_name(layer), corpus, n_samples, seq_len, autocast)
        cached = _read_cached(path) if use_cache else None
        if cached is None:
            missing.append(layer)
        else:
            result[layer] = cached.mean().to(device)
    if missing:
        logger.info("computing second moments for layers %s over %d texts x %d tokens", missing, n_samples, seq_len)
        chunks = token_chunks(tokenizer, corpus, n_samples, seq_len)
        moments = collect_second_moments(model, spec, missing, chunks, autocast=autocast)
        for layer, moment in moments.items():
            if use_cache:
                info = {"param": spec.weight_name(layer), "corpus": corpus.metadata, "n_samples": n_samples, "seq_len": seq_len, "model": fingerprint, "autocast": autocast}
                _write_cached(_cache_path(fingerprint, spec.weight_name(layer), corpus, n_samples, seq_len, autocast), moment, info)
            result[layer] = moment.mean()
    return result

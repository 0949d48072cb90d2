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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.data.corpora import TextCorpus
from editscope.models.fingerprint import model_fingerprint
from editscope.models.hooks import capture_inputs
from editscope.models.placement import input_device
from editscope.models.spec import ModelSpec
from editscope.precision import autocast as autocast_context
from editscope.precision import resolve
from editscope.storage import atomic_write_bytes, cache_home

logger = logging.getLogger(__name__)

# Bumped whenever what a cache entry means changes (e.g. how texts are cut into samples).
CACHE_FORMAT = 2
# Tokens per forward batch of a statistics pass (single-process and sharded passes alike).
BATCH_TOKENS = 4096


@dataclass
class SecondMoment:
    """Running sum of k k^T (float64) and the token count; mergeable across shards."""

    sum: Tensor
    count: int

    def update(self, keys: Tensor) -> None:
        """Add ``Float[Tensor, "tokens d"]`` keys (float32 product, float64 sum on the sum's device)."""
        keys = keys.float()
        self.sum += (keys.T @ keys).double().to(self.sum.device)
        self.count += keys.shape[0]

    def merge(self, other: SecondMoment) -> SecondMoment:
        return SecondMoment(self.sum + other.sum, self.count + other.count)

    def mean(self) -> Tensor:
        """C0 = E[k k^T], ``Float64[Tensor, "d d"]``."""
        if self.count == 0:
            raise ValueError("no tokens accumulated")
        return self.sum / self.count


# (layers, token chunks) -> partial sums per layer: one process by default, shards elsewhere (editscope.sweep.stats).
Collector = Callable[[Sequence[int], Sequence[Sequence[int]]], dict[int, SecondMoment]]


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


def stat_batches(chunks: Sequence[Sequence[int]], batch_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices into ``chunks``, one list per forward batch: longest chunks first, about ``batch_tokens`` a batch.

    The single-process pass and every shard of a sharded pass (see :func:`shard_batches`) run these
    same batches, so each batch's float32 products are the same wherever it runs; only the order of
    the float64 additions differs.
    """
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        width = len(chunks[order[start]])
        rows = max(1, batch_tokens // max(width, 1))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def shard_batches(batches: Sequence[Sequence[int]], chunks: Sequence[Sequence[int]], shards: int) -> list[list[list[int]]]:
    """``batches`` cut into at most ``shards`` consecutive groups of about equal token counts (none empty)."""
    if shards < 1:
        raise ValueError(f"shards: must be >= 1, got {shards}")
    tokens = [sum(len(chunks[i]) for i in batch) for batch in batches]
    total, groups, current, done = sum(tokens), [], [], 0
    for batch, count in zip(batches, tokens):
        current.append(list(batch))
        done += count
        if len(groups) < shards - 1 and done >= total * (len(groups) + 1) / shards:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def merge_moments(parts: Sequence[Mapping[int, SecondMoment]]) -> dict[int, SecondMoment]:
    """Exact merge of partial sums (float64 sums and token counts) per layer."""
    merged: dict[int, SecondMoment] = {}
    for part in parts:
        for layer, moment in part.items():
            merged[layer] = merged[layer].merge(moment) if layer in merged else SecondMoment(moment.sum.clone(), moment.count)
    return merged


@torch.no_grad()
def collect_second_moments(
    model: PreTrainedModel,
    spec: ModelSpec,
    layers: Sequence[int],
    chunks: Sequence[Sequence[int]],
    *,
    batch_tokens: int = BATCH_TOKENS,
    stop_early: bool = True,
    autocast: str | None = None,
    batches: Sequence[Sequence[int]] | None = None,
) -> dict[int, SecondMoment]:
    """One pass over ``chunks`` (token id lists) accumulating E[k k^T] at every layer in ``layers``.

    With ``stop_early`` the forward pass ends after the deepest layer's projection has read its input.
    ``autocast`` (``"auto"``, ``"bfloat16"``, ...; see :mod:`editscope.precision`) runs the forward pass in reduced precision; the products are
    still float32 and the sums float64. ``batches`` (indices into ``chunks``) defaults to
    :func:`stat_batches`. Each layer's sum lives on that layer's device.
    """
    device = input_device(model)
    paths = {layer: spec.module_path(layer, "mlp_out") for layer in layers}
    moments = {}
    for layer in layers:
        weight = spec.mlp_out_weight(model, layer)
        moments[layer] = SecondMoment(torch.zeros(weight.shape[1], weight.shape[1], dtype=torch.float64, device=weight.device), 0)
    stop = paths[max(layers)] if stop_early else None
    for batch in stat_batches(chunks, batch_tokens) if batches is None else batches:
        group = [chunks[i] for i in batch]
        width = max(len(seq) for seq in group)
        ids = torch.full((len(group), width), 0, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, seq in enumerate(group):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        with autocast_context(device, autocast):
            captured = capture_inputs(model, list(paths.values()), stop, input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        real = mask.bool()
        for layer, path in paths.items():
            moments[layer].update(captured[path][real.to(captured[path].device)])
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


def cache_path(fingerprint: str, param: str, corpus: TextCorpus, n_samples: int, seq_len: int, autocast: str | None) -> Path:
    """The cache file of one parameter's statistics (its ``.json`` sidecar holds the count and checksum)."""
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


def read_cached_moments(
    fingerprint: str, spec: ModelSpec, layers: Sequence[int], corpus: TextCorpus, *, n_samples: int, seq_len: int, autocast: str | None
) -> dict[int, SecondMoment]:
    """The cached sums of those ``layers`` that have a readable cache entry."""
    found = {}
    for layer in layers:
        cached = _read_cached(cache_path(fingerprint, spec.weight_name(layer), corpus, n_samples, seq_len, autocast))
        if cached is not None:
            found[layer] = cached
    return found


def write_cached_moments(
    fingerprint: str, spec: ModelSpec, moments: Mapping[int, SecondMoment], corpus: TextCorpus, *, n_samples: int, seq_len: int, autocast: str | None
) -> list[Path]:
    """Write each layer's sums to the cache the editors read; returns the files written."""
    paths = []
    for layer, moment in moments.items():
        param = spec.weight_name(layer)
        info = {"param": param, "corpus": corpus.metadata, "n_samples": n_samples, "seq_len": seq_len, "model": fingerprint, "autocast": autocast}
        path = cache_path(fingerprint, param, corpus, n_samples, seq_len, autocast)
        _write_cached(path, moment, info)
        paths.append(path)
    return paths


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
    collect: Collector | None = None,
) -> dict[int, Tensor]:
    """C0 per layer (``Float64[Tensor, "d_mlp d_mlp"]``, on the layer's device), from the disk cache where possible.

    ``fingerprint`` names the model the statistics belong to (default: this model's); a
    sequential editor passes the unedited model's, so a resumed run reads the same C0.
    ``collect`` computes the missing layers' sums (default: :func:`collect_second_moments` in this
    process; ``editscope.sweep.stats`` passes one that splits the chunks into shards).
    """
    fingerprint = fingerprint or model_fingerprint(model)
    autocast = resolve(autocast, input_device(model), "stats_autocast")  # the cache is keyed by what ran
    key = {"corpus": corpus, "n_samples": n_samples, "seq_len": seq_len, "autocast": autocast}
    moments = read_cached_moments(fingerprint, spec, layers, **key) if use_cache else {}
    missing = [layer for layer in layers if layer not in moments]
    if missing:
        logger.info("computing second moments for layers %s over %d texts x %d tokens", missing, n_samples, seq_len)
        chunks = token_chunks(tokenizer, corpus, n_samples, seq_len)
        if collect is None:
            computed = collect_second_moments(model, spec, missing, chunks, autocast=autocast)
        else:
            computed = collect(missing, chunks)
        if use_cache:
            write_cached_moments(fingerprint, spec, computed, **key)
        moments.update(computed)
    return {layer: moments[layer].mean().to(spec.mlp_out_weight(model, layer).device) for layer in layers}

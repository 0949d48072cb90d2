"""Sharded second-moment statistics: the corpus's batches split into shards, partial sums merged exactly.

The statistics pass (:mod:`editscope.linalg.stats`) cuts the corpus into token windows and runs them
in batches. Here those same batches are split into ``shards`` consecutive groups; each shard --
a Ray task that loads the model itself, or a loop in this process -- returns its float64 sums of
k k^T and token counts for every requested layer, and the driver adds them up and writes the cache
the editors read. Each batch's float32 products are those of the single-process pass, so the merged
C0 equals the single-process C0 up to the order of float64 additions (relative 1e-15) where the
shards run the same kernels (device and torch thread count); on different hardware the forward
passes themselves differ in float32 rounding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from editscope.config import ConfigError
from editscope.errors import ModelLoadError
from editscope.linalg.stats import (
    BATCH_TOKENS,
    Collector,
    SecondMoment,
    cache_path,
    collect_second_moments,
    merge_moments,
    read_cached_moments,
    second_moments,
    shard_batches,
    stat_batches,
)
from editscope.models.placement import input_device
from editscope.precision import resolve
from editscope.sweep.config import Resources
from editscope.sweep.task import torch_threads

logger = logging.getLogger(__name__)

Shard = list[list[list[int]]]  # batches of token windows
ShardRunner = Callable[[Sequence[int], list[Shard]], list[dict[int, SecondMoment]]]


@dataclass(frozen=True)
class StatsConfig:
    """One statistics job; the defaults are an editor's (see :func:`stats_config_for_editor`).

    Attributes:
        model: bundled name, HF folder or hub id.
        layers: blocks whose MLP output projection's input statistics are computed.
        corpus: text source (``default``: the bundled Wikipedia sample; see editscope.data.corpora).
        n_samples: token windows.
        seq_len: tokens per window.
        autocast: precision of the forward pass (``"auto"``, a dtype name or ``None``; resolved on the
            driver's model device, see :mod:`editscope.precision`).
        seed: seed of a model-sampled corpus (the editor's ``seed``).
        shards: pieces the batches are split into (1: one pass).
        resources: CPUs/GPUs of each shard's Ray task (its torch threads: ``num_cpus``).
        device_map: where each shard's model runs (see editscope.models.placement); ``None``: CPU.
    """

    model: str
    layers: tuple[int, ...]
    corpus: str = "default"
    n_samples: int = 1000
    seq_len: int = 256
    autocast: str | None = "auto"
    seed: int = 0
    shards: int = 1
    resources: Resources = field(default_factory=Resources)
    device_map: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("stats.layers: name at least one layer")
        for name in ("n_samples", "seq_len", "shards"):
            if getattr(self, name) < 1:
                raise ConfigError(f"stats.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class StatsResult:
    """The cache files of every layer, which layers were already cached, and the wall time."""

    files: dict[int, Path]
    cached: tuple[int, ...]
    computed: tuple[int, ...]
    shards: int
    seconds: float


def stats_config_for_editor(model: str, editor: str = "memit", **overrides: Any) -> StatsConfig:
    """The statistics ``editor`` reads for ``model`` (its shipped settings), with ``overrides`` (``None`` ignored)."""
    from editscope.editors import build_editor

    config = build_editor(editor, {}, model_name=model).config
    if not hasattr(config, "stats_samples"):
        raise ConfigError(f"stats --editor {editor}: this editor reads no second-moment statistics")
    data: dict[str, Any] = {
        "model": model, "layers": tuple(config.layers), "corpus": config.stats_corpus, "n_samples": config.stats_samples,
        "seq_len": config.stats_seq_len, "autocast": config.stats_autocast, "seed": config.seed,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    return StatsConfig(**data)


def collect_shard(model_name: str, device_map: Any, fingerprint: str, layers: Sequence[int], shard: Shard, autocast: str | None, threads: int) -> dict[int, tuple[Tensor, int]]:
    """A worker's part: load the model, check it is the driver's, sum k k^T over ``shard``'s batches."""
    from transformers.utils import logging as hf_logging

    from editscope.models import load, model_fingerprint

    hf_logging.disable_progress_bar()  # a worker process: no loading bars in the driver's log
    with torch_threads(threads):
        loaded = load(model_name, device_map=device_map)
        if model_fingerprint(loaded.model) != fingerprint:
            raise ModelLoadError(f"{model_name}: this worker loaded a different model (fingerprint {model_fingerprint(loaded.model)}, driver {fingerprint})")
        moments = _collect(loaded.model, loaded.spec, layers, shard, autocast)
    return {layer: (m.sum.cpu(), m.count) for layer, m in moments.items()}


def _collect(model: Any, spec: Any, layers: Sequence[int], shard: Shard, autocast: str | None) -> dict[int, SecondMoment]:
    chunks = [window for batch in shard for window in batch]
    bounds, start = [], 0
    for batch in shard:
        bounds.append(list(range(start, start + len(batch))))
        start += len(batch)
    return collect_second_moments(model, spec, layers, chunks, batches=bounds, autocast=autocast)


def sharded_collector(shards: int, run_shards: ShardRunner, batch_tokens: int = BATCH_TOKENS) -> Collector:
    """A :data:`~editscope.linalg.stats.Collector` that splits the pass's batches into ``shards`` and merges the parts."""

    def collect(layers: Sequence[int], chunks: Sequence[Sequence[int]]) -> dict[int, SecondMoment]:
        groups = shard_batches(stat_batches(chunks, batch_tokens), chunks, shards)
        logger.info("statistics: %d batches in %d shards", sum(len(g) for g in groups), len(groups))
        parts = run_shards(layers, [[[list(chunks[i]) for i in batch] for batch in group] for group in groups])
        return merge_moments(parts)

    return collect


def in_process_shards(model: Any, spec: Any, autocast: str | None) -> ShardRunner:
    """Shards one after another on the model already loaded here."""
    return lambda layers, shards: [_collect(model, spec, layers, shard, autocast) for shard in shards]


def ray_shards(config: StatsConfig, fingerprint: str, address: str | None) -> ShardRunner:
    """Each shard a Ray task with ``config.resources``."""
    from editscope.sweep.cluster import ray_session, task_options, warn_if_unplaceable

    def run(layers: Sequence[int], shards: list[Shard]) -> list[dict[int, SecondMoment]]:
        res = config.resources
        with ray_session(address) as ray:
            warn_if_unplaceable(ray, res.num_cpus, res.num_gpus)
            remote = ray.remote(collect_shard).options(**task_options(res.num_cpus, res.num_gpus, res.threads))
            refs = [remote.remote(config.model, config.device_map, fingerprint, list(layers), shard, config.autocast, res.threads) for shard in shards]
            results = ray.get(refs)
        return [{layer: SecondMoment(total, count) for layer, (total, count) in part.items()} for part in results]

    return run


def compute_statistics(config: StatsConfig, *, backend: str = "auto", ray_address: str | None = None) -> StatsResult:
    """Compute (or find cached) the statistics of ``config`` and write them where the editors read them."""
    from editscope.data.corpora import load_corpus
    from editscope.models import load, model_fingerprint
    from editscope.sweep.runner import choose_backend

    start = time.perf_counter()
    chosen = choose_backend(backend, ray_address)  # type: ignore[arg-type]
    loaded = load(config.model, device_map=config.device_map if chosen == "inprocess" else None)
    for layer in config.layers:
        loaded.spec.check_layer(loaded.model, layer)
    fingerprint = model_fingerprint(loaded.model)
    corpus = load_corpus(config.corpus, model=loaded.model, tokenizer=loaded.tokenizer, seed=config.seed)
    config = replace(config, autocast=resolve(config.autocast, input_device(loaded.model), "stats.autocast"))
    key = {"n_samples": config.n_samples, "seq_len": config.seq_len, "autocast": config.autocast}
    cached = tuple(sorted(read_cached_moments(fingerprint, loaded.spec, config.layers, corpus, **key)))
    if chosen == "ray":
        collect = sharded_collector(config.shards, ray_shards(config, fingerprint, ray_address))
    elif config.shards > 1:
        collect = sharded_collector(config.shards, in_process_shards(loaded.model, loaded.spec, config.autocast))
    else:
        collect = None
    with torch.no_grad():
        second_moments(loaded.model, loaded.tokenizer, loaded.spec, config.layers, corpus, fingerprint=fingerprint, collect=collect, **key)
    files = {layer: cache_path(fingerprint, loaded.spec.weight_name(layer), corpus, **key) for layer in config.layers}
    computed = tuple(layer for layer in config.layers if layer not in cached)
    return StatsResult(files, cached, computed, config.shards, time.perf_counter() - start)

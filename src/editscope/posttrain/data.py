"""Training examples for post-training: corpus windows (``cpt``) and prompt/answer pairs (``full``, ``lora``).

An example is a pair of token lists ``(input_ids, labels)`` with ``labels[i] = -100`` where no loss
is taken (the prompt of a pair, padding). The order of examples is a fixed function of the seed
and the step, so a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from editscope.data.corpora import load_corpus
from editscope.data.loaders import detect_format, is_demo, load_requests, read_records
from editscope.errors import DataError
from editscope.linalg.stats import token_chunks
from editscope.tokens import encode_pair, pad_id
from editscope.types import EditRequest

logger = logging.getLogger(__name__)

IGNORE = -100
INSTRUCTION_KEYS = (("instruction", "output"), ("prompt", "response"), ("question", "answer"))


@dataclass(frozen=True)
class Pair:
    """One supervised example: the model reads ``prompt`` and learns to continue it with ``answer``."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class Example:
    """Token ids and labels (``-100`` = no loss), both of the same length."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


# -- pairs -------------------------------------------------------------------------------------
def request_pairs(requests: Sequence[EditRequest], answer: str) -> list[Pair]:
    """Question-answer pairs from edit records: the prompt and each paraphrase, answered with the
    true object (``answer="true"``) or the counterfactual one (``"new"``)."""
    pairs = []
    for request in requests:
        target = request.target_true if answer == "true" else request.target_new
        for prompt in (request.text, *request.paraphrase_prompts):
            pairs.append(Pair(prompt, target))
    return pairs


def instruction_pair(record: Any, index: int, path: str) -> Pair | None:
    """A pair from an instruction record (Alpaca ``instruction``/``input``/``output``, or
    ``prompt``/``response``, or ``question``/``answer``); ``None`` if the record is none of these."""
    if not isinstance(record, Mapping):
        return None
    for prompt_key, answer_key in INSTRUCTION_KEYS:
        if prompt_key in record and answer_key in record:
            prompt, answer = record[prompt_key], record[answer_key]
            extra = record.get("input") if prompt_key == "instruction" else None
            for key, value in ((prompt_key, prompt), (answer_key, answer), ("input", extra)):
                if value is not None and not isinstance(value, str):
                    raise DataError(path, index, key, f"expected a string, got {type(value).__name__}")
            if not answer.strip():
                raise DataError(path, index, answer_key, "empty answer")
            prompt = f"{prompt}\n{extra}" if extra else prompt
            return Pair(prompt.rstrip() + "\n", answer.strip())
    return None


def load_pairs(source: str, answer: str) -> list[Pair]:
    """Pairs from ``demo``, an edit dataset file or an instruction file (format detected)."""
    if is_demo(source):
        return request_pairs(load_requests(source), answer)
    records = read_records(Path(source))
    if not records:
        raise DataError(source, None, None, "no records")
    first = instruction_pair(records[0], 0, source)
    if first is not None:
        pairs = []
        for index, record in enumerate(records):
            pair = instruction_pair(record, index, source)
            if pair is None:
                raise DataError(source, index, None, "not an instruction record like record 0")
            pairs.append(pair)
        return pairs
    detect_format(records, source)  # a clear error when the file is neither kind
    return request_pairs(load_requests(source), answer)


def pair_example(tokenizer: PreTrainedTokenizerBase, pair: Pair, seq_len: int) -> Example:
    """Prompt tokens (no loss), answer tokens and EOS (loss); cut from the left to ``seq_len``."""
    prompt_ids, answer_ids = encode_pair(tokenizer, pair.prompt, pair.answer)
    if tokenizer.eos_token_id is not None:
        answer_ids = [*answer_ids, int(tokenizer.eos_token_id)]
    ids = (prompt_ids + answer_ids)[-seq_len:]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[-seq_len:]
    return Example(tuple(ids), tuple(labels))


# -- corpus windows ----------------------------------------------------------------------------
def corpus_examples(tokenizer: PreTrainedTokenizerBase, source: str, n_windows: int, seq_len: int) -> list[Example]:
    """Up to ``n_windows`` windows of ``seq_len`` tokens of the corpus, every token with loss."""
    corpus = load_corpus(source)
    windows = token_chunks(tokenizer, corpus, n_windows, seq_len)
    if not windows:
        raise DataError(source, None, None, "gives no token windows")
    return [Example(tuple(w), tuple(w)) for w in windows]


def build_examples(
    tokenizer: PreTrainedTokenizerBase, mode: str, source: str, answer: str, n_needed: int, seq_len: int
) -> list[Example]:
    """The training set of a run: ``n_needed`` is how many examples the steps consume (corpus
    windows stop there; pairs are all used, in as many epochs as the steps need)."""
    if mode == "cpt":
        examples = corpus_examples(tokenizer, source, n_needed, seq_len)
    else:
        examples = [pair_example(tokenizer, p, seq_len) for p in load_pairs(source, answer)]
    epochs = n_needed / len(examples)
    logger.info("%d training examples from %s; the run reads them %.2f times", len(examples), source, epochs)
    return examples


# -- order and batches -------------------------------------------------------------------------
def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The order epoch ``epoch`` reads the examples in: a permutation seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def example_index(position: int, n_examples: int, seed: int) -> int:
    """The example read at global ``position`` (see :func:`epoch_order`)."""
    epoch, offset = divmod(position, n_examples)
    return epoch_order(n_examples, seed, epoch)[offset]


def batch_for_step(examples: Sequence[Example], step: int, batch_size: int, seed: int) -> list[Example]:
    """The examples of optimizer step ``step`` (0-based); each epoch's order is drawn once."""
    orders: dict[int, list[int]] = {}
    batch = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, len(examples))
        if epoch not in orders:
            orders[epoch] = epoch_order(len(examples), seed, epoch)
        batch.append(examples[orders[epoch][offset]])
    return batch


def collate(
    tokenizer: PreTrainedTokenizerBase, batch: Sequence[Example], device: torch.device
) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` ([batch, pos] each)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}

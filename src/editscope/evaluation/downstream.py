"""Few-shot classification by label-word probability, with the demonstrations' key/value cache reused.

Per task: ``k`` demonstrations (drawn with a seed, class-balanced, disjoint from the evaluated
examples) form a fixed prefix. At every measurement the prefix runs through the model once; its
key/value cache is copied to each batch of evaluated examples, which are right-padded and run on
top of it. Only the last real position of each example goes through the unembedding, and the
prediction is the class whose answer word's first token has the largest logit there.

Metrics (one function each): accuracy; F1 of the positive class (binary) or macro-F1
(multiclass); Matthews' correlation in Gorodkin's K-class form R_K (equal to Matthews' phi for
two classes); agreement with the unedited model's predictions.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from editscope.evaluation.tasks import Task, TaskData
from editscope.models.placement import input_device
from editscope.models.spec import spec_for_config
from editscope.tokens import encode_pair, head_logits, pad_id

logger = logging.getLogger(__name__)

SEPARATOR = "\n\n"


# -- selection -----------------------------------------------------------------------------
def _by_class(labels: Sequence[int], indices: Sequence[int], rng: random.Random) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(labels[i], []).append(i)
    for members in groups.values():
        rng.shuffle(members)
    return dict(sorted(groups.items()))


def balanced_sample(labels: Sequence[int], candidates: Sequence[int], n: int, rng: random.Random) -> list[int]:
    """``n`` of ``candidates`` (indices into ``labels``), as equal per class as the pool allows.

    Classes take turns (in class order, from a seeded shuffle of each class); a class that runs
    out leaves its turns to the others. Raises ``ValueError`` when the pool holds fewer than ``n``.
    """
    if n > len(candidates):
        raise ValueError(f"asked for {n} examples but only {len(candidates)} are available")
    groups = _by_class(labels, candidates, rng)
    chosen: list[int] = []
    while len(chosen) < n:
        for members in groups.values():
            if members and len(chosen) < n:
                chosen.append(members.pop())
    return chosen


def select_examples(
    labels: Sequence[int],
    n_shots: int,
    n_examples: int,
    seed: int,
    task: str,
    lengths: Sequence[int] | None = None,
    demo_pool: float = 1.0,
) -> tuple[list[int], list[int]]:
    """Demonstration and evaluation indices: class-balanced, disjoint, fixed by ``seed`` and the task name.

    Demonstrations are drawn first, from the ``demo_pool`` fraction of examples with the smallest
    ``lengths`` (all examples where ``lengths`` is ``None``), and shuffled (so their classes do not
    alternate in a fixed pattern); the evaluated examples come from all the rest, sorted by index.
    """
    rng = random.Random(f"{seed}:{task}")
    everything = list(range(len(labels)))
    pool = everything
    if lengths is not None and demo_pool < 1.0:
        by_length = sorted(everything, key=lambda i: (lengths[i], i))
        pool = sorted(by_length[: max(n_shots, math.ceil(demo_pool * len(everything)))])
    demos = balanced_sample(labels, pool, n_shots, rng)
    rng.shuffle(demos)
    taken = set(demos)
    examples = balanced_sample(labels, [i for i in everything if i not in taken], n_examples, rng)
    return demos, sorted(examples)


# -- prompts and tokens --------------------------------------------------------------------
def prefix_text(task: Task, demos: Sequence[tuple[dict, int]]) -> str:
    """Instruction and demonstrations (``template`` + answer word each), joined by blank lines."""
    parts = [task.instruction] if task.instruction else []
    parts += [task.render(fields) + task.answer(label) for fields, label in demos]
    return SEPARATOR.join(parts)


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids a tokenizer puts before a text (a BOS token, or nothing)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def answer_tokens(tokenizer: PreTrainedTokenizerBase, task: Task, context: str) -> tuple[list[int], list[int]]:
    """The answer words' tokens as they continue ``context``: their shared leading tokens and each one's first own token.

    With tokenizers that keep the answer's leading space as a token of its own (byte-level
    tokenizers without merges), every answer starts with that token; it is then appended to the
    query (its probability is the same whatever the class) and the next, distinct tokens compared.
    Raises ``ValueError`` where two answers share their first own token or one answer is a prefix
    of another.
    """
    encoded = [encode_pair(tokenizer, context, word)[1] for word in task.label_words]
    shared: list[int] = []
    while all(len(e) > len(shared) for e in encoded) and len({e[len(shared)] for e in encoded}) == 1:
        shared.append(encoded[0][len(shared)])
    firsts = [e[len(shared)] if len(e) > len(shared) else None for e in encoded]
    if None in firsts or len(set(firsts)) != len(firsts):
        pieces = {word: tokenizer.convert_ids_to_tokens(e) for word, e in zip(task.label_words, encoded)}
        raise ValueError(
            f"task {task.name}: the answer words' first tokens are not distinct ({pieces}); choose other label words"
        )
    return shared, [int(f) for f in firsts if f is not None]


@dataclass(frozen=True)
class EncodedTask:
    """A task tokenized once: the shared prefix, each evaluated example's continuation and gold class.

    ``prefix_ids`` are fed first (BOS included where the tokenizer adds one); example ``i`` is the
    token sequence ``prefix_ids + query_ids[i]`` whose next token is classified. ``pad_id`` fills
    the right padding (never attended to by real tokens). ``answer_ids`` are the class's answer
    tokens compared at the last position (see :func:`answer_tokens`).
    """

    task: Task
    prefix_ids: tuple[int, ...]
    query_ids: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]
    answer_ids: tuple[int, ...]
    pad_id: int


def encode_task(tokenizer: PreTrainedTokenizerBase, data: TaskData, demos: Sequence[int], examples: Sequence[int]) -> EncodedTask:
    """Tokenize the prefix built from ``demos`` and the queries of ``examples`` (indices into ``data``)."""
    task = data.task
    text = prefix_text(task, [(dict(data.examples[i].fields), data.examples[i].label) for i in demos])
    lead = SEPARATOR if text else ""
    queries = [lead + task.render(data.examples[i].fields) for i in examples]
    prefix = special_prefix(tokenizer) + (tokenizer(text, add_special_tokens=False)["input_ids"] if text else [])
    query_ids = tuple(tuple(ids) for ids in tokenizer(queries, add_special_tokens=False)["input_ids"])
    shared, answers = answer_tokens(tokenizer, task, (text + queries[0]) if queries else text)
    query_ids = tuple(q + tuple(shared) for q in query_ids)
    labels = tuple(data.examples[i].label for i in examples)
    return EncodedTask(task, tuple(prefix), query_ids, labels, tuple(answers), pad_id(tokenizer))


# -- cached forward ------------------------------------------------------------------------
@torch.no_grad()
def prefix_cache(model: PreTrainedModel, prefix_ids: Sequence[int]) -> Cache | None:
    """Key/value cache of ``prefix_ids`` (batch 1), or ``None`` for an empty prefix."""
    if not prefix_ids:
        return None
    device = input_device(model)
    ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
    return model.base_model(input_ids=ids, use_cache=True).cache


def expand_cache(cache: Cache, batch: int) -> Cache:
    """A copy of batch-1 ``cache`` repeated ``batch`` times; ``cache`` itself is left as it was."""
    expanded = copy.deepcopy(cache)
    expanded.batch_repeat_interleave(batch)
    return expanded


@torch.no_grad()
def next_token_logits(
    model: PreTrainedModel, cache: Cache | None, prefix_len: int, queries: Sequence[Sequence[int]], pad: int
) -> Tensor:
    """Logits after the last token of each query continuing the cached prefix: ``[batch, vocab]``.

    Queries are right-padded; the attention mask covers the prefix and each query's real tokens,
    positions continue from ``prefix_len``, and only the last real position is unembedded.
    """
    device = input_device(model)
    width = max(len(q) for q in queries)
    ids = torch.full((len(queries), width), pad, dtype=torch.long)
    mask = torch.zeros((len(queries), prefix_len + width), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for row, q in enumerate(queries):
        ids[row, : len(q)] = torch.tensor(list(q), dtype=torch.long)
        mask[row, prefix_len : prefix_len + len(q)] = 1
    positions = (torch.arange(width) + prefix_len).expand(len(queries), width)
    kwargs = {"cache": expand_cache(cache, len(queries)), "use_cache": True} if cache is not None else {"use_cache": False}
    hidden = model.base_model(
        input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **kwargs
    )
    states = hidden.last_hidden_state  # on the last block's device
    last = torch.tensor([len(q) - 1 for q in queries], device=states.device)
    final = states[torch.arange(len(queries), device=states.device), last]
    return head_logits(model, final)


def length_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first: at most ``batch_size`` rows and ``batch_tokens`` padded tokens a batch (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def answer_logits(model: PreTrainedModel, encoded: EncodedTask, batch_size: int = 16, batch_tokens: int = 2048) -> Tensor:
    """Logits of each class's answer token for every evaluated example: ``[examples, classes]`` (float32, CPU).

    The prefix runs once; examples go in batches of similar length (see :func:`length_batches`).
    """
    context = spec_for_config(model.config).context_length(model.config)
    longest = len(encoded.prefix_ids) + max(len(q) for q in encoded.query_ids)
    if longest > context:
        raise ValueError(
            f"task {encoded.task.name}: prefix + example is {longest} tokens, beyond the model's {context}; use fewer shots"
        )
    cache = prefix_cache(model, encoded.prefix_ids)
    answers = torch.tensor(encoded.answer_ids)
    out = torch.empty((len(encoded.query_ids), len(answers)))
    for chunk in length_batches([len(q) for q in encoded.query_ids], batch_size, batch_tokens):
        logits = next_token_logits(model, cache, len(encoded.prefix_ids), [encoded.query_ids[i] for i in chunk], encoded.pad_id)
        out[chunk] = logits[:, answers.to(logits.device)].float().cpu()
    return out


def classify(model: PreTrainedModel, encoded: EncodedTask, batch_size: int = 16, batch_tokens: int = 2048) -> list[int]:
    """Predicted class per evaluated example: argmax of the answer tokens' logits."""
    return answer_logits(model, encoded, batch_size, batch_tokens).argmax(dim=1).tolist()


# -- metrics -------------------------------------------------------------------------------
def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], n_classes: int) -> Tensor:
    """``C[true, predicted]`` counts, ``[n_classes, n_classes]`` (float64)."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    counts = torch.zeros((n_classes, n_classes), dtype=torch.float64)
    for t, p in zip(labels, predictions):
        counts[t, p] += 1
    return counts


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Fraction of predictions equal to the labels."""
    if not labels:
        return math.nan
    return sum(int(t == p) for t, p in zip(labels, predictions)) / len(labels)


def f1_class(confusion: Tensor, k: int) -> float:
    """F1 of class ``k`` = 2 TP / (2 TP + FP + FN); 0 where the class is neither true nor predicted."""
    tp = float(confusion[k, k])
    fp = float(confusion[:, k].sum()) - tp
    fn = float(confusion[k, :].sum()) - tp
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else 0.0


def f1_macro(confusion: Tensor) -> float:
    """Unweighted mean of every class's F1 (all classes of the task, present or not)."""
    return sum(f1_class(confusion, k) for k in range(confusion.shape[0])) / confusion.shape[0]


def matthews_rk(confusion: Tensor) -> float:
    """Gorodkin's R_K (2004, eq. 8): (c s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)).

    ``c`` correct predictions, ``s`` examples, ``t_k`` times class k is true, ``p_k`` times it is
    predicted. Equals Matthews' correlation for two classes; 0 where a factor of the denominator
    is 0 (e.g. every prediction the same class), as scikit-learn does.
    """
    t = confusion.sum(dim=1)
    p = confusion.sum(dim=0)
    c = float(confusion.trace())
    s = float(confusion.sum())
    denominator = (s * s - float(p @ p)) * (s * s - float(t @ t))
    return (c * s - float(p @ t)) / math.sqrt(denominator) if denominator > 0 else 0.0


def agreement(predictions: Sequence[int], reference: Sequence[int]) -> float:
    """Fraction of predictions equal to the reference (unedited) model's."""
    if len(predictions) != len(reference):
        raise ValueError(f"{len(predictions)} predictions but {len(reference)} reference predictions")
    return sum(int(a == b) for a, b in zip(predictions, reference)) / len(predictions) if predictions else math.nan


def task_metrics(
    labels: Sequence[int], predictions: Sequence[int], reference: Sequence[int], n_classes: int, positive: int | None
) -> dict[str, float]:
    """``acc``, ``f1`` (positive class, or macro where ``positive`` is None), ``mcc`` (R_K) and ``agree``."""
    confusion = confusion_matrix(labels, predictions, n_classes)
    return {
        "acc": accuracy(labels, predictions),
        "f1": f1_class(confusion, positive) if positive is not None else f1_macro(confusion),
        "mcc": matthews_rk(confusion),
        "agree": agreement(predictions, reference),
    }

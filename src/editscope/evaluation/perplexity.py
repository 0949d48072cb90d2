"""Perplexity on held-out text: fixed token windows, mean negative log-likelihood, exp.

Text sources (the ``source`` string):
  * anything :func:`editscope.data.corpora.load_corpus` reads (``default``, ``bundled:<name>``, a
    plain-text or WikiExtractor file or folder);
  * a WikiText file of the tokenized release (``wiki.{valid,test}.tokens``, in pytorch/examples
    named ``{valid,test}.txt``), recognised by its `` = Title = `` heading lines and `` @-@ ``
    markers and detokenized first (see :func:`detokenize_wikitext`).

The documents are read in order (or from the end backwards, where the statistics pass reads the
start of the same corpus), joined by a blank line into one token stream and cut into
``n_windows`` windows of ``seq_len`` tokens, ``stride`` tokens apart. Each window scores the
tokens the previous one did not (all of the first window's, the last ``stride`` of the others);
where the tokenizer puts a BOS token before a text, every window starts with it (fed, not scored).
Perplexity is exp of the mean NLL over all scored tokens.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.data.corpora import load_corpus
from editscope.errors import DataError
from editscope.evaluation.downstream import special_prefix
from editscope.models.placement import input_device

logger = logging.getLogger(__name__)

HEADING = re.compile(r"^\s*((?:= )+)(.+?)((?: =)+)\s*$")  # " = Title = ", " = = Section = = "
NUMBER_MARKERS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
SEPARATOR = "\n\n"


# -- WikiText ------------------------------------------------------------------------------
def detokenize_wikitext(line: str) -> str:
    """Undo the WikiText tokenization of one line.

    ``1 @,@ 000`` -> ``1,000``, ``red @-@ tipped`` -> ``red-tipped``, ``0 @.@ 7`` -> ``0.7``; no
    space before ``. , ; : ! ? % ) ]`` or a clitic (``'s``, ``n't``, ``'re``...), none after
    ``( [ $``; ``" quoted "`` -> ``"quoted"``. ``<unk>`` (the release's out-of-vocabulary marker)
    is kept as it is: it is part of the published text.
    """
    text = line
    for marker, plain in NUMBER_MARKERS:
        text = text.replace(marker, plain)
    text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$]) ", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ve|'m|'ll|'d)\b", r"\1", text)
    return re.sub(r" {2,}", " ", text).strip()


def is_wikitext(raw: str) -> bool:
    """Whether ``raw`` looks like the tokenized WikiText release (heading lines and ``@`` markers)."""
    head = raw[:200_000]
    return any(HEADING.match(line) for line in head.splitlines()[:50]) and any(m in head for m, _ in NUMBER_MARKERS)


def wikitext_articles(raw: str) -> list[str]:
    """The articles of a tokenized WikiText file, detokenized.

    A top-level heading `` = Title = `` starts an article and is dropped (it only repeats the
    title); section headings `` = = Section = = `` become a line holding the section name (as in
    WikiExtractor text); the empty lines between paragraphs are dropped, paragraphs end in one
    newline.
    """
    articles: list[list[str]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        heading = HEADING.match(line)
        if heading and heading.group(1).count("=") == 1:
            articles.append([])
            continue
        if not articles:
            articles.append([])
        articles[-1].append(detokenize_wikitext(heading.group(2) if heading else line))
    return ["\n".join(lines) for lines in articles if lines]


def load_texts(source: str) -> list[str]:
    """The documents of ``source`` (module docstring), WikiText files detokenized."""
    path = Path(source).expanduser()
    if path.is_file():
        raw = path.read_text(encoding="utf-8", errors="replace")
        if is_wikitext(raw):
            return wikitext_articles(raw)
    return list(load_corpus(source).texts)


def source_name(source: str) -> str:
    """The ``<corpus>`` of the ``ppl/<corpus>`` key: ``default``, the bundled name, or the file name.

    A file name loses its text suffixes (``.txt``, ``.tokens``, ``.utf8``) and has its dots made
    dashes; a WikiText file whose name does not say so gets ``wikitext-`` in front
    (``wikitext-2/valid.txt`` -> ``wikitext-valid``, ``wiki.test.tokens`` -> ``wiki-test``).
    """
    if source.startswith("bundled:"):
        return source.split(":", 1)[1]
    path = Path(source).expanduser()
    if not path.exists():
        return source.replace("/", "-")
    name = path.name
    for suffix in (".txt", ".tokens", ".utf8"):
        name = name.removesuffix(suffix)
    name = name.replace(".", "-")
    if (
        path.is_file()
        and not name.startswith("wiki")
        and is_wikitext(path.read_text(encoding="utf-8", errors="replace")[:200_000])
    ):
        name = f"wikitext-{name}"
    return name


# -- windows -------------------------------------------------------------------------------
def reading_order(texts: Sequence[str], from_end: bool, skip: int) -> list[str]:
    """Documents in the order windows are cut: from the start, or from the end backwards; the first ``skip`` of that order left out."""
    ordered = list(reversed(texts)) if from_end else list(texts)
    return ordered[skip:]


def token_stream(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], n_tokens: int) -> list[int]:
    """The first ``n_tokens`` ids of ``texts`` joined by a blank line (no special tokens); fewer if the texts run out."""
    separator = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for i, text in enumerate(texts):
        if i:
            stream += separator
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(stream) >= n_tokens:
            return stream[:n_tokens]
    return stream


def make_windows(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], n_windows: int, seq_len: int, stride: int | None = None
) -> tuple[Tensor, Tensor]:
    """Input ids ``[windows, lead + seq_len]`` and the mask of scored positions (same shape, bool).

    ``lead`` is the tokenizer's BOS (0 or 1 tokens). Position ``j`` of a window is scored when its
    token is predicted from the ones before (never the lead, nor the first token without one) and
    was not scored by the previous window.
    """
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len ({seq_len}), got {stride}")
    stream = token_stream(tokenizer, texts, seq_len + (n_windows - 1) * stride)
    if len(stream) < seq_len:
        raise DataError("perplexity text", None, None, f"gives {len(stream)} tokens, fewer than one window of {seq_len}")
    available = 1 + (len(stream) - seq_len) // stride
    if available < n_windows:
        logger.warning(
            "perplexity text gives %d windows of %d tokens, fewer than the %d asked for", available, seq_len, n_windows
        )
    lead = special_prefix(tokenizer)
    rows, masks = [], []
    for w in range(min(n_windows, available)):
        rows.append(lead + stream[w * stride : w * stride + seq_len])
        mask = torch.zeros(len(lead) + seq_len, dtype=torch.bool)
        first = 0 if w == 0 else seq_len - stride
        mask[len(lead) + first :] = True
        mask[0] = False  # the first position has nothing before it
        masks.append(mask)
    return torch.tensor(rows, dtype=torch.long), torch.stack(masks)


# -- the measure ---------------------------------------------------------------------------
@torch.no_grad()
def token_nll(model: PreTrainedModel, input_ids: Tensor) -> Tensor:
    """NLL (nats) of each token given the ones before it: ``[batch, pos]`` for ``input_ids`` ``[batch, pos]`` (0 at position 0)."""
    device = input_device(model)
    ids = input_ids.to(device)
    logits = model(input_ids=ids, use_cache=False).logits
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    ).reshape(ids.shape[0], -1)
    return torch.cat([torch.zeros_like(nll[:, :1]), nll], dim=1).cpu()


def mean_nll(model: PreTrainedModel, windows: Tensor, scored: Tensor, batch_size: int = 4) -> float:
    """Mean NLL over the scored positions of ``windows`` (both ``[windows, pos]``), in batches."""
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        nll = token_nll(model, windows[start : start + batch_size])
        mask = scored[start : start + batch_size]
        total += float(nll[mask].double().sum())
        count += int(mask.sum())
    if count == 0:
        raise ValueError("no scored tokens")
    return total / count


def perplexity(nll: float) -> float:
    """PPL = exp(mean NLL) (nats)."""
    return math.exp(nll)

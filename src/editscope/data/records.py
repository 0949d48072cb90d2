"""Field access on raw JSON records with errors that name the field (dotted path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from editscope.errors import RequestError


def field(record: Mapping[str, Any], path: str, kind: type | tuple[type, ...] = str, *, required: bool = True) -> Any:
    """``record`` at dotted ``path`` (``"requested_rewrite.target_new.str"``), type-checked.

    Strings must be non-empty; a missing optional field gives ``None``.
    """
    value: Any = record
    walked: list[str] = []
    for key in path.split("."):
        walked.append(key)
        if not isinstance(value, Mapping):
            raise RequestError(".".join(walked[:-1]) or path, f"expected an object, got {type(value).__name__}")
        if key not in value:
            if required:
                raise RequestError(".".join(walked), "missing")
            return None
        value = value[key]
    if value is None and not required:
        return None
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RequestError(path, f"expected {names}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise RequestError(path, "must be a non-empty string")
    return value


def str_list(record: Mapping[str, Any], path: str, *, required: bool = False) -> tuple[str, ...]:
    """A list of non-empty strings at ``path`` (missing optional -> empty tuple)."""
    values = field(record, path, list, required=required)
    if values is None:
        return ()
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise RequestError(f"{path}[{i}]", f"expected a non-empty string, got {value!r}")
    return tuple(values)


def template_from_text(text: str, subject: str, path: str) -> str:
    """Turn a prompt with the subject written out into a ``{}`` template (first occurrence)."""
    if "{}" in text:
        return text
    if subject not in text:
        raise RequestError(path, f"subject {subject!r} does not occur in the prompt {text!r}")
    return text.replace(subject, "{}", 1)

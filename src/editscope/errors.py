"""Exception types that carry enough context for a clear message."""

from __future__ import annotations


class EditscopeError(Exception):
    """Base class of every error editscope raises on purpose."""


class RequestError(EditscopeError, ValueError):
    """An edit request is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DataError(EditscopeError, ValueError):
    """A record of a data file is invalid: names the file, the record index and the field."""

    def __init__(self, path: str, index: int | None, field: str | None, message: str) -> None:
        where = path if index is None else f"{path}: record {index}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.index = index
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "index": self.index, "field": self.field, "message": self.message}


class ModelLoadError(EditscopeError, RuntimeError):
    """A model could not be found, converted or loaded."""


class UnsupportedArchitectureError(EditscopeError, KeyError):
    """No ModelSpec is registered for a model's ``config.model_type``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

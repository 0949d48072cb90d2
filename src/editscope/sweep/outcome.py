"""What became of each run of a sweep, and which failures are worth another attempt."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from editscope.errors import EditscopeError

Status = Literal["finished", "skipped", "failed"]


@dataclass(frozen=True)
class Outcome:
    """One run's end.

    Attributes:
        name: the run's name (its folder under the sweep's root).
        folder: the run folder.
        status: ``finished`` (ran now), ``skipped`` (already complete), ``failed`` (after every attempt).
        attempts: attempts made now (0 for a skipped run).
        seconds: wall time of the successful or last attempt.
        weights_sha256: digest of the final edited weights (finished runs).
        error: the last attempt's error (failed runs).
    """

    name: str
    folder: str
    status: Status
    attempts: int = 0
    seconds: float = 0.0
    weights_sha256: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class SweepReport:
    """Every run's outcome in grid order, the backend that ran them and the sweep's wall time."""

    backend: str
    outcomes: tuple[Outcome, ...]
    seconds: float

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.status for o in self.outcomes))


Listener = Callable[[Outcome], None]


def is_retryable(error: BaseException) -> bool:
    """Config, data and model errors fail the same way again; crashes and lost workers may not."""
    cause = getattr(error, "cause", None)  # Ray wraps a task's exception; the original is ``cause``
    return not isinstance(error, EditscopeError) and not isinstance(cause, EditscopeError)


def describe_error(error: BaseException) -> str:
    text = str(getattr(error, "cause", None) or error).strip().splitlines()
    return f"{type(getattr(error, 'cause', None) or error).__name__}: {text[-1] if text else ''}"

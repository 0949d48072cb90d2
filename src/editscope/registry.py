"""One generic registry for editors, instruments and model specs.

Names are validated when registered and looked up with a "did you mean" on a typo, in the
style of peft's ``register_peft_method`` and lm-evaluation-harness's registry.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from editscope.errors import EditscopeError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class RegistryError(EditscopeError, KeyError):
    """Unknown or duplicate registry name."""

    def __str__(self) -> str:
        return str(self.args[0])


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """Maps lower-case names to objects of one kind (``kind`` is used in messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if not _NAME.match(name):
            raise RegistryError(f"invalid {self.kind} name {name!r}: use lower-case letters, digits, '-', '_' or '.'")
        if name in self._items and self._items[name] is not item:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@REGISTRY.register("memit")`` beside the implementation."""

        def wrap(item: T) -> T:
            return self.add(name, item)

        return wrap

    def register_class(self, name: str) -> Callable[[T], T]:
        """Class decorator that also sets the class attribute ``name`` (used in its messages)."""

        def wrap(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            return self.add(name, cls)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = sorted(self._items)
            raise RegistryError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

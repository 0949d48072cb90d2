"""The instrument contract: ``baseline`` once on the unedited model, then ``measure`` at every checkpoint.

Instruments never change the model. Whatever they carry between checkpoints (the unedited
model's values, warm starts) is in ``state_dict`` so a resumed run measures the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.registry import Registry

INSTRUMENTS: Registry[type[Instrument]] = Registry("instrument")


def register_instrument(name: str):
    """Class decorator: register an :class:`Instrument` subclass under ``name``."""
    return INSTRUMENTS.register_class(name)


class Instrument(ABC):
    """Base class; subclasses implement :meth:`measure` and usually :meth:`baseline`."""

    name: ClassVar[str] = "instrument"

    def baseline(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Record what later measurements compare against (called once, on the unedited model)."""

    @abstractmethod
    def measure(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        """Flat metric keys -> values for the model as it is now."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

"""The instrument contract: ``baseline`` once on the unedited model, then ``measure`` at every checkpoint.

Instruments never change the model. A run calls, in order: :meth:`Instrument.watch` with the
parameters its editor changes, :meth:`Instrument.plan` with every
request it is going to edit, :meth:`Instrument.baseline` on the unedited model, then after each
applied batch :meth:`Instrument.observe` and at checkpoints :meth:`Instrument.measure`.

On resume the run loads the unedited model, so it calls ``plan`` and ``baseline`` again (the
unedited values are recomputed, not stored), replays ``observe`` for the batches already
applied, and then restores :meth:`Instrument.state_dict`: only what changes between checkpoints
(e.g. warm starts), kept small because it is saved at every checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.registry import Registry
from editscope.types import EditRequest

INSTRUMENTS: Registry[type[Instrument]] = Registry("instrument")


def register_instrument(name: str):
    """Class decorator: register an :class:`Instrument` subclass under ``name``."""
    return INSTRUMENTS.register_class(name)


class Instrument(ABC):
    """Base class; subclasses implement :meth:`measure` and usually :meth:`baseline`."""

    name: ClassVar[str] = "instrument"
    config_class: ClassVar[type | None] = None

    def watch(self, parameters: Sequence[str]) -> None:
        """Names of the parameters the run's editor changes (before ``baseline``). Default: ignored."""

    def plan(self, requests: Sequence[EditRequest]) -> None:
        """The requests the run will edit, in order (before ``baseline``). Default: ignored."""

    def observe(self, requests: Sequence[EditRequest]) -> None:
        """Called after each applied batch with its requests. Default: ignored."""

    def baseline(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float] | None:
        """Record what later measurements compare against (called once, on the unedited model).

        May return the unedited model's measurement, when computing the baseline already gave it
        (the run then uses it for step 0 instead of calling :meth:`measure`). Default: ``None``.
        """
        return None

    def warm_cache(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Compute and cache on disk what :meth:`baseline` would read back (before several runs start
        side by side, so they do not each compute the same thing). Default: nothing is cached."""

    @abstractmethod
    def measure(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        """Flat metric keys -> values for the model as it is now."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

"""Instruments observe the model as edits go; each returns flat metric keys (see DESIGN.md)."""

from editscope.instruments import activations, downstream, edit_quality, weights  # noqa: F401  (registration on import)
from editscope.instruments.base import INSTRUMENTS, Instrument, register_instrument

__all__ = ["INSTRUMENTS", "Instrument", "register_instrument"]

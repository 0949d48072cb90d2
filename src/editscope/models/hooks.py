"""Tracing and intervention on plain torch hooks: read a module's input, add to its output, stop early.

Decoder blocks return a tensor or a tuple whose first item is the hidden state, depending on
the architecture and library version; :func:`output_hidden` and :func:`replace_hidden` hide that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest needed module has run."""


def output_hidden(output: Any) -> Tensor:
    """The hidden-state tensor of a module output (tensor, or tuple whose first item it is)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output: Any, hidden: Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def hooks(model: nn.Module, pre: dict[str, Callable] | None = None, post: dict[str, Callable] | None = None) -> Iterator[None]:
    """Register forward pre-hooks / hooks on modules by dotted path, removed on exit (also on error)."""
    handles = []
    try:
        for path, fn in (pre or {}).items():
            handles.append(model.get_submodule(path).register_forward_pre_hook(fn, with_kwargs=True))
        for path, fn in (post or {}).items():
            handles.append(model.get_submodule(path).register_forward_hook(fn, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _contiguous_input(module: nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def contiguous_head(model: nn.Module) -> None:
    """Make the unembedding always see a contiguous input (idempotent; results unchanged).

    ``logits_to_keep`` slices the last positions of ``[batch, pos, d]`` hidden states, a
    non-contiguous view; a CPU ``linear`` on such a 3D view took a batched-matmul path 4-5x slower
    than on a contiguous copy (SmolLM2's 49,152 x 576 head, 40 x 4 positions: 0.55 s against 0.12 s,
    AVX2, 2 threads) -- the largest single cost of a MEND training step and of scoring targets.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_editscope_contiguous", False):
        return
    head.register_forward_pre_hook(_contiguous_input)
    head._editscope_contiguous = True


def run_until(model: nn.Module, stop_after: str | None, call: Callable[..., Any] | None = None, **inputs: Any) -> None:
    """Run ``model(**inputs)`` (or ``call(**inputs)``, e.g. the model's body without its head); if
    ``stop_after`` is a module path of ``model``, stop once that module has run."""

    def stop(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        raise StopForward

    forward = call or model
    try:
        if stop_after is None:
            forward(**inputs)
        else:
            with hooks(model, post={stop_after: stop}):
                forward(**inputs)
    except StopForward:
        pass


def capture_inputs(
    model: nn.Module, paths: list[str], stop_after: str | None, **inputs: Any
) -> dict[str, Tensor]:
    """The first positional input of each module in ``paths`` ([batch, pos, d]) for one forward pass."""
    captured: dict[str, Tensor] = {}

    def make(path: str) -> Callable:
        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured[path] = (args[0] if args else next(iter(kwargs.values()))).detach()

        return grab

    with hooks(model, pre={p: make(p) for p in paths}):
        run_until(model, stop_after, **inputs)
    return captured


def capture_outputs(
    model: nn.Module, paths: list[str], stop_after: str | None, call: Callable[..., Any] | None = None, **inputs: Any
) -> dict[str, Any]:
    """The raw output of each module in ``paths`` (tensor or tuple; see :func:`output_hidden`) for one
    pass of ``model`` (or of ``call``, see :func:`run_until`)."""
    captured: dict[str, Any] = {}

    def make(path: str) -> Callable:
        def grab(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            captured[path] = output

        return grab

    with torch.no_grad(), hooks(model, post={p: make(p) for p in paths}):
        run_until(model, stop_after, call, **inputs)
    return captured


def gather_rows(hidden: Tensor, positions: Tensor) -> Tensor:
    """``hidden[i, positions[i]]`` for every row: [batch, pos, d] x [batch] -> [batch, d] (on ``hidden``'s device)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]

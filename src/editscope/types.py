"""The shared vocabulary: edit requests, weight deltas and edit outcomes.

All are frozen dataclasses. An :class:`EditRequest` validates itself on construction and
names the offending field in its error; loaders add the file and record index.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editscope.errors import RequestError

SUBJECT_SLOT = "{}"


@dataclass(frozen=True)
class NeighborhoodPrompt:
    """A prompt about another subject whose answer the edit must not change."""

    prompt: str
    answer: str


def _check_str(value: object, name: str, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise RequestError(name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RequestError(name, "must be a non-empty string")


def _check_str_tuple(values: object, name: str) -> None:
    if not isinstance(values, tuple):
        raise RequestError(name, f"expected a tuple of strings, got {type(values).__name__}")
    for i, value in enumerate(values):
        _check_str(value, f"{name}[{i}]")


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into the model: ``prompt.format(subject) + target_new``.

    Attributes:
        id: stable identifier (dataset case id or the project's own).
        prompt: template with exactly one ``{}`` where the subject goes, e.g. ``"{} is located in"``.
        subject: the entity whose fact is edited; its last token is where keys are read.
        target_new: the new object, as the continuation of the prompt (no leading space).
        target_true: the object the unedited fact has.
        paraphrase_prompts: full prompts (subject filled in) that ask for the same fact.
        neighborhood: prompts about other subjects with the answers they must keep.
        generation_prompts: open prompts about the subject for fluency/entropy checks.
        relation_id: relation identifier where known (e.g. Wikidata ``P103``).
        meta: extra per-record facts (e.g. the bundled model's rank of the true object).
    """

    id: str
    prompt: str
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood: tuple[NeighborhoodPrompt, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    relation_id: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_str(self.id, "id")
        _check_str(self.prompt, "prompt")
        if self.prompt.count(SUBJECT_SLOT) != 1:
            raise RequestError(
                "prompt",
                f"must contain exactly one {SUBJECT_SLOT!r} subject slot, found "
                f"{self.prompt.count(SUBJECT_SLOT)} in {self.prompt!r}",
            )
        _check_str(self.subject, "subject")
        _check_str(self.target_new, "target_new")
        _check_str(self.target_true, "target_true")
        _check_str_tuple(self.paraphrase_prompts, "paraphrase_prompts")
        _check_str_tuple(self.generation_prompts, "generation_prompts")
        if not isinstance(self.neighborhood, tuple):
            raise RequestError("neighborhood", "expected a tuple of NeighborhoodPrompt")
        for i, item in enumerate(self.neighborhood):
            if not isinstance(item, NeighborhoodPrompt):
                raise RequestError(f"neighborhood[{i}]", f"expected NeighborhoodPrompt, got {type(item).__name__}")
            _check_str(item.prompt, f"neighborhood[{i}].prompt")
            _check_str(item.answer, f"neighborhood[{i}].answer")
        if self.relation_id is not None:
            _check_str(self.relation_id, "relation_id")

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace(SUBJECT_SLOT, self.subject, 1)

    @property
    def subject_char_span(self) -> tuple[int, int]:
        """Character span ``[start, end)`` of the subject inside :attr:`text`."""
        start = self.prompt.index(SUBJECT_SLOT)
        return start, start + len(self.subject)

    def to_dict(self) -> dict[str, Any]:
        """The project's own JSONL schema (the inverse of ``data.loaders.request_from_dict``)."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": self.target_new,
            "target_true": self.target_true,
            "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood": [{"prompt": n.prompt, "answer": n.answer} for n in self.neighborhood],
            "generation_prompts": list(self.generation_prompts),
            "relation_id": self.relation_id,
            "meta": dict(self.meta),
        }


@contextlib.contextmanager
def preserved(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Save the named parameters (values and gradients); restore them bit-exactly on exit, whatever happens.

    Yields the saved values by name (the originals, for computing ``final - original``).
    """
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in names}
    grads = {name: params[name].grad for name in saved}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
                params[name].grad = grads[name]


@dataclass(frozen=True)
class WeightDelta:
    """Additive updates to named parameters, in each parameter's own storage layout.

    ``deltas[name]`` has the shape of ``model.get_parameter(name)``: an editor that works in
    (out, in) orientation transposes through its ``ModelSpec`` before building the delta.
    Only the run applies deltas; editors return them and leave the model unchanged.
    """

    deltas: Mapping[str, torch.Tensor]

    @property
    def names(self) -> list[str]:
        return sorted(self.deltas)

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(d).all()) for d in self.deltas.values())

    def fro_norms(self) -> dict[str, float]:
        return {name: float(torch.linalg.vector_norm(d.double())) for name, d in self.deltas.items()}

    def _check_against(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        targets: dict[str, nn.Parameter] = {}
        for name, delta in self.deltas.items():
            if name not in params:
                raise RequestError("delta", f"model has no parameter {name!r}")
            if tuple(params[name].shape) != tuple(delta.shape):
                raise RequestError(
                    "delta", f"{name}: delta shape {tuple(delta.shape)} != parameter shape {tuple(params[name].shape)}"
                )
            targets[name] = params[name]
        if not self.is_finite():
            bad = [n for n, d in self.deltas.items() if not bool(torch.isfinite(d).all())]
            raise RequestError("delta", f"non-finite update refused for {', '.join(sorted(bad))}; model left unchanged")
        return targets

    @torch.no_grad()
    def apply_to(self, model: nn.Module, *, scale: float = 1.0) -> None:
        """Add ``scale * delta`` to each named parameter; all checks run before any change."""
        targets = self._check_against(model)
        for name, param in targets.items():
            param.add_(self.deltas[name].to(device=param.device, dtype=param.dtype), alpha=scale)

    def revert(self, model: nn.Module) -> None:
        """Undo :meth:`apply_to` up to floating-point rounding; :meth:`applied` restores exactly."""
        self.apply_to(model, scale=-1.0)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Apply the delta for the duration of the block, then restore the touched weights bit-exactly."""
        with preserved(model, self._check_against(model)):
            self.apply_to(model)
            yield

    def __add__(self, other: WeightDelta) -> WeightDelta:
        merged = dict(self.deltas)
        for name, delta in other.deltas.items():
            merged[name] = merged[name] + delta if name in merged else delta
        return WeightDelta(merged)

    @staticmethod
    def zeros_like(model: nn.Module, names: Iterable[str]) -> WeightDelta:
        params = dict(model.named_parameters())
        return WeightDelta({n: torch.zeros_like(params[n]) for n in names})


@dataclass(frozen=True)
class EditOutcome:
    """What one ``compute_delta`` call produced, plus bookkeeping for logs and metrics."""

    delta: WeightDelta
    request_ids: tuple[str, ...]
    seconds: float = math.nan
    info: Mapping[str, float] = field(default_factory=dict)

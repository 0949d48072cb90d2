"""The editor contract: ``compute_delta`` returns a :class:`WeightDelta` and leaves the model unchanged.

A subclass implements one method, :meth:`Editor.compute_delta`. Everything else is an optional
hook with a default (peft's ``BaseTuner`` style):

* :meth:`Editor.prepare` -- called by the run on the unedited model before the first batch (also
  when a run resumes): what belongs to the unedited model (statistics, context templates) is
  resolved here;
* :meth:`Editor.edited_parameters` -- the parameter names this editor may change (contract tests
  check that nothing else changes);
* :meth:`Editor.commit` -- called by the run after it applied the delta of a batch; sequential
  editors (AlphaEdit's accumulated keys, ENCORE's previous-edit keys) update their state here;
* :meth:`Editor.state_dict` / :meth:`Editor.load_state_dict` -- that state, as tensors and plain data.

Hyperparameters are a frozen dataclass (``Editor.config_class``), one field per hyperparameter with
its meaning, unit and source in the docstring; per-model defaults ship as YAML under ``hparams/``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.config import ConfigError, deep_merge, from_dict, load_yaml
from editscope.models.spec import ModelSpec, spec_for_config
from editscope.registry import Registry
from editscope.types import EditRequest, WeightDelta

EDITORS: Registry[type[Editor]] = Registry("editor")


def register_editor(name: str):
    """Class decorator: register an :class:`Editor` subclass under ``name``."""
    return EDITORS.register_class(name)


@dataclass(frozen=True)
class EditorConfig:
    """Fields every editor has.

    Attributes:
        layers: indices of the decoder blocks whose weights the editor changes.
    """

    layers: tuple[int, ...] = (4, 5, 6, 7, 8)

    @classmethod
    def derived(cls, n_layers: int, d_mlp: int) -> dict[str, Any]:
        """Settings for a model without shipped hyperparameters, from its shape (``n_layers`` blocks,
        MLPs ``d_mlp`` wide); see :mod:`editscope.editors.published`. Default: none (the class defaults)."""
        return {}


class Editor(ABC):
    """Base class of all editors; see the module docstring for the contract."""

    name: ClassVar[str] = "editor"
    config_class: ClassVar[type[EditorConfig]] = EditorConfig

    def __init__(self, config: EditorConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(f"{self.name}: expected {self.config_class.__name__}, got {type(self.config).__name__}")

    # -- the one required method ---------------------------------------------------------
    @abstractmethod
    def compute_delta(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
    ) -> WeightDelta:
        """The update that writes ``requests`` into ``model``; the model itself is left unchanged."""

    # -- optional hooks ------------------------------------------------------------------
    def prepare(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Any:
        """Resolve what belongs to the unedited ``model`` (called by the run before any edit). Default: nothing."""
        return None

    def edited_parameters(self, model: PreTrainedModel) -> list[str]:
        """Names of the parameters this editor may change: by default the MLP output weights of ``layers``."""
        spec = self.spec(model)
        for layer in self.config.layers:
            spec.check_layer(model, layer)
        return [spec.weight_name(layer, "mlp_out") for layer in self.config.layers]

    def commit(self, requests: Sequence[EditRequest], delta: WeightDelta) -> None:
        """Called after the run applied ``delta``; sequential state is updated here. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Sequential state (tensors and plain data). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

    # -- helpers for subclasses ----------------------------------------------------------
    @staticmethod
    def spec(model: PreTrainedModel) -> ModelSpec:
        return spec_for_config(model.config)

    @staticmethod
    def check_requests(requests: Sequence[EditRequest]) -> None:
        if not requests:
            raise ValueError("no requests to edit")
        for i, request in enumerate(requests):
            if not isinstance(request, EditRequest):
                raise TypeError(f"requests[{i}] is {type(request).__name__}, not an EditRequest")


@contextlib.contextmanager
def trainable(model: PreTrainedModel, names: Sequence[str]) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Enable gradients on ``names`` only, restoring every parameter's ``requires_grad`` afterwards."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    try:
        model.requires_grad_(False)
        for name in names:
            params[name].requires_grad_(True)
        yield {name: params[name] for name in names}
    finally:
        for name, flag in saved.items():
            params[name].requires_grad_(flag)


def default_config(editor: str, model_name: str | None) -> dict[str, Any]:
    """The shipped hyperparameters of ``editor`` for ``model_name`` (:mod:`editscope.editors.published`):
    its ``hparams/<editor>/<key>.yaml``, else the rule on its shape where its ``config.json`` can be
    read, else ``{}`` (the config class's defaults)."""
    from editscope.editors.published import config_facts, hparams_key, shape_of

    if model_name is None:
        return {}
    facts = config_facts(model_name)
    path = resources.files(__package__).joinpath("hparams", editor, f"{hparams_key(model_name, facts)}.yaml")
    if path.is_file():
        return load_yaml(str(path))
    shape = shape_of(facts) if facts else None
    return EDITORS.get(editor).config_class.derived(**shape) if shape else {}


def build_editor(name: str, overrides: dict[str, Any] | None = None, *, model_name: str | None = None) -> Editor:
    """Instantiate editor ``name`` with its shipped defaults for ``model_name`` and ``overrides`` on top."""
    cls = EDITORS.get(name)
    data = deep_merge(default_config(name, model_name), overrides or {})
    return cls(from_dict(cls.config_class, data, where=f"{name} config"))

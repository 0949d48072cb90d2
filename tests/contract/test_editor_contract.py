"""The contract every registered editor passes on tiny llama and tiny gpt2 (transposed Conv1D) models.

* ``compute_delta`` leaves the model bit-identical;
* only the declared parameters change when the delta is applied;
* the delta is finite and has the parameters' shapes;
* editor state round-trips through ``state_dict`` / ``load_state_dict``;
* the target's probability rises once the delta is applied.

A new editor needs an entry in ``TINY_OVERRIDES`` (small, fast settings for tiny models).
"""

from __future__ import annotations

import copy

import pytest
import torch

import editscope.editors  # noqa: F401  (registers every editor)
from editscope.editors import EDITORS, build_editor
from editscope.evaluation import score_targets
from editscope.models import tiny_model
from editscope.types import EditRequest

# Settings for tiny random models: layers 1-2 of 4, few steps, small statistics.
_LOCATE = {"context_lengths": [], "stats_samples": 200, "stats_seq_len": 32, "z": {"steps": 30, "weight_decay": 1e-3}}
TINY_OVERRIDES: dict[str, dict] = {
    "memit": {**_LOCATE, "layers": [1, 2], "mom2_update_weight": 10.0},
    "emmet": {**_LOCATE, "layers": [1, 2], "mom2_update_weight": 10.0},
    "alphaedit": {**_LOCATE, "layers": [1, 2], "nullspace_threshold": 0.1, "alpha": 0.1},
    "encore": {**_LOCATE, "layers": [1, 2], "mom2_update_weight": 10.0, "norm_weight": 1.0, "z": {"steps": 30, "weight_decay": 1e-3, "mpes": True}},
    "rome": {**_LOCATE, "layers": [2]},
    "ft": {"layers": [1, 2], "steps": 20, "lr": 5e-2},
    "ft-l": {"layers": [1, 2], "steps": 20, "lr": 5e-2, "norm_constraint": 5e-2},
    "lora": {"layers": [1, 2], "steps": 30, "lr": 5e-2, "rank": 4},
    "mend": {"layers": [-2, -1]},
}
# Editors that need something trained for the model: the fixture giving ``arch -> {field: value}``.
TRAINED: dict[str, str] = {"mend": "mend_checkpoint"}

REQUESTS = [
    EditRequest(id="a", prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(id="b", prompt="{} plays the sport of", subject="Serena Williams", target_new="golf", target_true="tennis"),
]


def editors() -> list[str]:
    return EDITORS.names()


# The stability options (RECT, PRUNE, norm anchors) on editors their papers combine them with.
VARIANTS: dict[str, tuple[str, dict]] = {
    "memit+rect": ("memit", {"rect_keep": 0.4}),
    "memit+prune": ("memit", {"prune": True}),
    "memit+norm_anchor": ("memit", {"norm_anchor": True, "anchor_samples": 4}),
    "alphaedit+norm_anchor": ("alphaedit", {"norm_anchor": True, "anchor_samples": 4}),
    "encore+rect": ("encore", {"rect_keep": 0.4}),
}


def cases() -> list[str]:
    return [*editors(), *sorted(VARIANTS)]


@pytest.fixture(params=["llama", "gpt2", "gemma3"])
def tiny(request):
    return tiny_model(request.param, seed=0)


def make_editor(case: str, extra: dict | None = None):
    name, variant = VARIANTS.get(case, (case, {}))
    if name not in TINY_OVERRIDES:
        pytest.fail(f"editor {name!r} has no TINY_OVERRIDES entry in the contract tests")
    return build_editor(name, {**TINY_OVERRIDES[name], **variant, **(extra or {})})


def trained_overrides(name: str, arch: str, request) -> dict:
    """``{"checkpoint": folder}`` for editors in ``TRAINED``, trained for ``tiny_model(arch)``; else nothing."""
    if name not in TRAINED:
        return {}
    return {"checkpoint": str(request.getfixturevalue(TRAINED[name])(arch))}


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("name", cases())
def test_contract(name, tiny, request):
    model, tok, spec = tiny
    editor = make_editor(name, trained_overrides(name, spec.name, request))
    before = _snapshot(model)
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    p_before = [s.logprob for s in score_targets(model, tok, [r.text for r in REQUESTS], [r.target_new for r in REQUESTS])]

    delta = editor.compute_delta(model, tok, REQUESTS)

    for n, p in model.state_dict().items():
        assert torch.equal(p, before[n]), f"compute_delta changed {n}"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    declared = set(editor.edited_parameters(model))
    assert set(delta.names) <= declared
    assert delta.is_finite()
    params = dict(model.named_parameters())
    for n, d in delta.deltas.items():
        assert d.shape == params[n].shape and d.dtype == params[n].dtype

    delta.apply_to(model)
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    assert changed and changed <= declared
    p_after = [s.logprob for s in score_targets(model, tok, [r.text for r in REQUESTS], [r.target_new for r in REQUESTS])]
    assert all(a > b for a, b in zip(p_after, p_before)), (p_before, p_after)
    editor.commit(REQUESTS, delta)

    state = copy.deepcopy(editor.state_dict())
    fresh = make_editor(name)
    fresh.load_state_dict(state)
    restored = fresh.state_dict()
    assert restored.keys() == state.keys()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(restored[key], value), key
        else:
            assert restored[key] == value, key


@pytest.mark.parametrize("name", editors())
def test_layer_the_model_lacks_is_a_clear_error(name):
    model, tok, _ = tiny_model("llama")
    before = _snapshot(model)
    editor = build_editor(name, {**TINY_OVERRIDES[name], "layers": [99]})
    with pytest.raises(ValueError, match="layer 99 does not exist"):
        editor.compute_delta(model, tok, REQUESTS[:1])
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_non_finite_update_is_refused_and_model_restored(monkeypatch):
    model, tok, _ = tiny_model("llama")
    before = _snapshot(model)
    editor = build_editor("memit", TINY_OVERRIDES["memit"])
    monkeypatch.setattr(type(editor), "layer_update", lambda self, layer, r, k: torch.full((r.shape[0], k.shape[0]), float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite"):
        editor.compute_delta(model, tok, REQUESTS[:1])
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())

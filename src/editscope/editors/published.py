"""Which shipped hyperparameters a model gets: its own file, a research model's published one, or a rule.

``hparams/<editor>/<key>.yaml`` holds an editor's settings for one model:

* the bundled models (``smollm2-135m``, ``gemma3-270m``), measured here;
* the research models of the papers (``gpt2-xl``, ``gpt-j-6b``, ``llama3-8b``), each value copied
  from the reference repository's file named in its header. ``hparams/models.yaml`` says which
  names (hub ids) and which ``config.json`` facts identify them, so a local copy of GPT-J gets
  GPT-J's file too.

Any other model whose ``config.json`` can be read (a local folder, the hub cache) starts from a rule
on its shape (:meth:`~editscope.editors.base.EditorConfig.derived`): the MEMIT family edits five
consecutive MLPs from block ``n_layers / 8`` rounded (Llama-3-8B's 4-8 of 32; SmolLM2's 4-8 of 30;
GPT-J's 3-8 of 28 starts one lower) and scales lambda with the MLP width from GPT-J's 15,000 at 16,384 (measured on
SmolLM2-135M: the efficacy of one batch follows lambda / d_mlp, see ``hparams/memit/smollm2-135m.yaml``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

MODELS_FILE = "models.yaml"


def published_models() -> dict[str, dict[str, Any]]:
    """``{key: {"hub_ids": [...], "config": {fact: value}}}`` from ``hparams/models.yaml``."""
    text = resources.files(__package__).joinpath("hparams", MODELS_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def config_facts(model_name: str) -> dict[str, Any] | None:
    """The ``config.json`` of ``model_name`` where it can be read without loading the model: a local
    folder, or a hub id in the local hub cache; ``None`` otherwise."""
    folder = Path(model_name).expanduser()
    path = folder / "config.json" if folder.is_dir() else None
    if path is None and "/" in model_name and not model_name.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_name, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return facts if isinstance(facts, dict) else None


def hparams_key(model_name: str | None, facts: dict[str, Any] | None = None) -> str | None:
    """The ``hparams`` key of ``model_name``: the name itself where a file is named so, a published
    model it is a hub id of, or whose config ``facts`` it has; ``None`` otherwise."""
    if model_name is None:
        return None
    for key, entry in published_models().items():
        if model_name == key or model_name in entry.get("hub_ids", ()):
            return key
        if facts is not None and all(facts.get(k) == v for k, v in entry["config"].items()):
            return key
    return model_name


def shape_of(facts: dict[str, Any]) -> dict[str, int] | None:
    """``{"n_layers", "d_mlp"}`` from a ``config.json``'s facts (names differ by architecture)."""
    facts = facts.get("text_config") or facts
    layers = facts.get("num_hidden_layers", facts.get("n_layer"))
    width = facts.get("hidden_size", facts.get("n_embd"))
    d_mlp = facts.get("intermediate_size") or facts.get("n_inner") or (4 * width if width else None)
    if not isinstance(layers, int) or not isinstance(d_mlp, int):
        return None
    return {"n_layers": layers, "d_mlp": d_mlp}

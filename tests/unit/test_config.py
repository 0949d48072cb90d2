"""Config merging: flags and overrides go on top of shipped or file values, nested mappings merged."""

from __future__ import annotations

from editscope.config import deep_merge, parse_assignments
from editscope.editors import build_editor
from editscope.runs import load_run_config


def test_deep_merge_keeps_sibling_keys_and_replaces_leaves():
    base = {"z": {"mpes": True, "steps": 25}, "layers": [4, 5], "lam": 1.0}
    merged = deep_merge(base, {"z": {"steps": 5}, "layers": [3]})
    assert merged == {"z": {"mpes": True, "steps": 5}, "layers": [3], "lam": 1.0}
    assert base["z"] == {"mpes": True, "steps": 25}  # the base is not modified


def test_nested_override_keeps_the_shipped_nested_defaults():
    """ENCORE ships z.mpes = true for SmolLM2: overriding z.steps must not switch MPES off."""
    editor = build_editor("encore", parse_assignments(["z.steps=7"], "--hp"), model_name="smollm2-135m")
    assert editor.config.z.steps == 7
    assert editor.config.z.mpes and editor.config.z.mpes_hits == 5
    assert editor.config.z.clamp_norm_factor == 0.75


def test_run_flags_merge_into_the_config_files_editor_settings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("editor: encore\neditor_config:\n  norm_weight: 30.0\n  z: {mpes_hits: 2}\nout: " + str(tmp_path / "r") + "\n")
    config = load_run_config(path, {"editor_config": parse_assignments(["z.steps=9"], "--hp")})
    assert config.editor_config == {"norm_weight": 30.0, "z": {"mpes_hits": 2, "steps": 9}}

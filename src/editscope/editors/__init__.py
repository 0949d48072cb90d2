"""Editors: one module per method, all registered in :data:`EDITORS`."""

from editscope.editors import alphaedit, emmet, encore, ft, lora, memit, mend, rome  # noqa: F401  (registration on import)
from editscope.editors.base import EDITORS, Editor, EditorConfig, build_editor, register_editor

__all__ = ["EDITORS", "Editor", "EditorConfig", "build_editor", "register_editor"]

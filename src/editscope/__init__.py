"""editscope: sequential knowledge editing and the model-health instruments that watch it.

The package is layered (see DESIGN.md): ``types`` and ``registry`` are the shared vocabulary,
``models`` knows architectures and loading, ``data`` turns published edit datasets into
:class:`~editscope.types.EditRequest` lists, and the editors, instruments, runs and reports
build on those.
"""

from editscope.types import EditRequest, NeighborhoodPrompt, WeightDelta

__all__ = ["EditRequest", "NeighborhoodPrompt", "WeightDelta", "__version__"]
__version__ = "0.1.0"

"""Architectures (:class:`ModelSpec`), loading, bundled models and tiny test models."""

from editscope.models.bundled import BUNDLED_MODELS, ensure_bundled
from editscope.models.fingerprint import model_fingerprint
from editscope.models.loading import LoadedModel, load, load_folder
from editscope.models.spec import MODEL_SPECS, ModelSpec, register_model_spec, spec_for_config, supported_architectures
from editscope.models.tiny import TINY_ARCHS, tiny_model

__all__ = [
    "BUNDLED_MODELS",
    "MODEL_SPECS",
    "TINY_ARCHS",
    "LoadedModel",
    "ModelSpec",
    "ensure_bundled",
    "load",
    "load_folder",
    "model_fingerprint",
    "register_model_spec",
    "spec_for_config",
    "supported_architectures",
    "tiny_model",
]

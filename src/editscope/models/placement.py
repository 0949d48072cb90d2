"""Where a model's modules sit: one device, or a device map over several (accelerate), every weight resident.

A model too large for one device is spread over several with a device map: ``{module path: device}``
(``{"model.embed_tokens": "cuda:0", "model.layers.0": "cuda:0", ..., "model.layers.20": "cuda:1", ...}``)
or a strategy that accelerate computes one with (``auto``, ``balanced``, ``balanced_low_0``,
``sequential``). accelerate's hooks move each block's inputs to the block's device. Unlike
``from_pretrained(device_map=...)``, modules mapped to ``cpu`` run on the CPU with their weights there
(not offloaded to an accelerator at each call): editing needs every weight resident as a real
tensor, so ``disk`` is refused. Code that reads or writes activations and weights uses each tensor's
own device (:func:`input_device` for inputs), never a model-wide one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from editscope.errors import ModelLoadError

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = str | Mapping[str, str | int]


def input_device(model: nn.Module) -> torch.device:
    """The device token ids go to: the input embedding's."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if get is not None else None
    if embedding is not None:
        return embedding.weight.device
    return next(model.parameters()).device


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    raise ValueError(f"{type(module).__name__} has no parameters or buffers")


def _device_name(value: str | int) -> str:
    name = f"cuda:{value}" if isinstance(value, int) else str(value)
    if name == "disk":
        raise ModelLoadError("device_map: 'disk' offload is not supported; editing needs every weight resident (use 'cpu' for what does not fit)")
    try:
        torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"device_map: {value!r} is not a device (e.g. 'cpu', 'cuda:0', 0)") from None
    return name


def resolve_device_map(model: nn.Module, device_map: DeviceMap) -> dict[str, str]:
    """``{module path: device}`` for ``device_map``: a strategy, one device (``""`` maps the whole model) or a map."""
    if isinstance(device_map, str) and device_map in STRATEGIES:
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        no_split = list(getattr(model, "_no_split_modules", None) or [])
        dtype = next(model.parameters()).dtype
        max_memory = None
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, no_split_module_classes=no_split, dtype=dtype, low_zero=device_map == "balanced_low_0")
        resolved = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
        return {name: _device_name(device) for name, device in resolved.items()}
    if isinstance(device_map, str):
        return {"": _device_name(device_map)}
    if not isinstance(device_map, Mapping) or not device_map:
        raise ModelLoadError(f"device_map: expected a device, one of {', '.join(STRATEGIES)}, or {{module: device}}; got {device_map!r}")
    modules = dict(model.named_modules())
    for name in device_map:
        if name and name not in modules:
            from editscope.registry import did_you_mean

            raise ModelLoadError(f"device_map: the model has no module {name!r}{did_you_mean(name, [m for m in modules if m])}")
    return {name: _device_name(device) for name, device in device_map.items()}


def place_model(model: nn.Module, device_map: DeviceMap, *, force_hooks: bool = False) -> dict[str, str]:
    """Move ``model``'s modules to their devices (in place); returns the resolved map.

    One device: a plain ``model.to``. Several: accelerate's ``dispatch_model`` with every weight
    resident on its device. ``force_hooks`` adds accelerate's hooks even for one device (tests
    exercise the hook path on a CPU-only machine that way).
    """
    resolved = resolve_device_map(model, device_map)
    devices = set(resolved.values())
    if len(devices) == 1 and not force_hooks:
        model.to(next(iter(devices)))
        return resolved
    from accelerate import dispatch_model
    from accelerate.utils import check_device_map

    try:
        check_device_map(model, resolved)
    except ValueError as exc:
        raise ModelLoadError(f"device_map: {exc}") from None
    # main_device "cpu" keeps cpu-mapped modules on the CPU instead of offloading them to an accelerator.
    main_device: Any = "cpu" if "cpu" in devices else None
    quiet = logging.getLogger("accelerate.big_modeling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns of cpu "offload" whenever a map names cpu, even with main_device cpu
    try:
        dispatch_model(model, device_map=resolved, main_device=main_device, force_hooks=force_hooks)
    finally:
        quiet.setLevel(level)
    offloaded = [name for name, param in model.named_parameters() if param.device.type == "meta"]
    if offloaded:
        raise ModelLoadError(f"device_map: {len(offloaded)} parameters were offloaded (e.g. {offloaded[0]}); editing needs them resident")
    logger.info("placed the model on %s", ", ".join(sorted(devices)))
    return resolved


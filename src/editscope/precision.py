"""Reduced-precision compute where the result is unchanged (bf16 autocast on the model's device type)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def autocast(device: torch.device, dtype_name: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type with ``dtype_name`` (e.g. ``"bfloat16"``), or a no-op for ``None``."""
    if dtype_name is None:
        return contextlib.nullcontext()
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown autocast dtype {dtype_name!r} (use e.g. 'bfloat16' or null)")
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the RNGs for the block (CPU and ``device``'s), restoring the caller's RNG state afterwards."""
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [], device_type=device.type):
        torch.manual_seed(seed)
        yield

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


def differentiable_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """The attention kernel for passes that are differentiated: on CPU, PyTorch's math SDPA.

    CPU's flash-attention kernel is fast forward but its backward took about 10x its forward on
    the short sequences of an edit (SmolLM2, 70 rows of ~25 tokens): 60 ms against 6 ms a layer,
    a quarter of a z* step. With the math kernel a z* step ran 22% faster (same losses to bf16
    rounding). Other devices keep their default kernels.
    """
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the RNGs for the block (CPU and ``device``'s), restoring the caller's RNG state afterwards."""
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [], device_type=device.type):
        torch.manual_seed(seed)
        yield

"""What every benchmark's JSON carries about the machine it ran on (importable from the benchmark scripts).

``machine_record(model, tokenizer)`` gives the ``machine`` block: the precision record of
``editscope.precision`` (device, CPU model and capability, native bf16 and how that was decided,
what ``auto`` resolved to, the ``EDITSCOPE_PRECISION`` override), the torch thread count and a plain
full forward's tokens per second on the same machine, so that a time can be read as a
*forward-token cost*: seconds x forward tokens/s, comparable across machines.

The forward pass: 8 windows of 256 tokens of the bundled statistics corpus, two batches of 4, the
model's own precision (float32 for the bundled model), all layers and the unembedding, best of 2
after a warm-up.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from editscope.data.corpora import load_corpus
from editscope.linalg.stats import token_chunks
from editscope.models.placement import input_device
from editscope.precision import precision_record

FORWARD_WINDOWS, FORWARD_LEN, FORWARD_BATCH = 8, 256, 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def forward_tokens_per_s(model: Any, tokenizer: Any) -> float:
    """Tokens per second of a plain full forward (module docstring)."""
    device = input_device(model)
    chunks = [c for c in token_chunks(tokenizer, load_corpus("default"), FORWARD_WINDOWS * 4, FORWARD_LEN) if len(c) == FORWARD_LEN]
    windows = torch.tensor(chunks[:FORWARD_WINDOWS], device=device)
    model(input_ids=windows[:1, :32], use_cache=False)  # warm-up
    best = float("inf")
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        for i in range(0, len(windows), FORWARD_BATCH):
            model(input_ids=windows[i : i + FORWARD_BATCH], use_cache=False)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return windows.numel() / best


def machine_record(model: Any, tokenizer: Any) -> dict[str, Any]:
    """The ``machine`` block of a benchmark's JSON (module docstring)."""
    device = input_device(model)
    return {**precision_record(device), "forward_tokens_per_s": round(forward_tokens_per_s(model, tokenizer), 1)}


def forward_token_cost(seconds: float, machine: dict[str, Any]) -> float:
    """``seconds`` as forward tokens: how many tokens a plain full forward passes in that time on this machine."""
    return round(seconds * machine["forward_tokens_per_s"], 1)

"""Where a findings folder's numbers were measured: each part's machine, precision, threads and time.

A verdict can depend on the precision (on SmolLM2-135M the unedited 4-shot MMLU accuracy was 0.33
in bf16 and 0.36 in fp32, on either side of the above-chance line claim 4 uses), and a folder can be
filled by several calls on several machines (every part resumes). So the page says, per part, what
its own folder recorded when it began: the precision record of :func:`editscope.precision.precision_record`
(CPU model and capability, what ``auto`` resolved to, the ``EDITSCOPE_PRECISION`` override, torch
threads) and the run's accumulated wall time (resumes included, not the time spent waiting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PartRecord:
    """One part of a findings call as its folder recorded it.

    Attributes:
        part: ``posttrain/<mode>``, ``mend training`` or ``edits/<editor>``.
        machine: the CPU model or accelerator name, with the CPU capability (``AVX2``, ``AVX512``, ...).
        precision: what ``auto`` resolved to (``float32``, ``bfloat16``), with the override if one was set.
        threads: torch threads of the process that began the part.
        torch: the torch version.
        wall_s: the part's accumulated wall time in seconds (``None`` where its folder has none).
    """

    part: str
    machine: str
    precision: str
    threads: int | None
    torch: str
    wall_s: float | None


def part_record(part: str, precision: Mapping[str, Any], wall_s: float | None, threads: int | None = None) -> PartRecord:
    """:class:`PartRecord` from a saved precision record (``{}`` where the folder kept none)."""
    name = str(precision.get("name") or precision.get("device") or "unrecorded")
    capability = precision.get("cpu_capability")
    machine = f"{name} ({capability})" if capability and precision.get("device", "cpu") == "cpu" else name
    resolved = str(precision.get("auto") or "unrecorded")
    override = precision.get("override")
    setting = f"{resolved} (EDITSCOPE_PRECISION={override})" if override else resolved
    saved_threads = precision.get("torch_threads")
    return PartRecord(part, machine, setting, threads if threads is not None else saved_threads, str(precision.get("torch") or "unrecorded"),
                      None if wall_s is None else float(wall_s))  # fmt: skip


def run_folder_record(part: str, resolved: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> PartRecord:
    """A post-training or editing run folder's :class:`PartRecord`, from what was read of it already: the
    ``resolved`` record of its ``config.yaml`` and its ``metrics.jsonl`` records (the last carries the run's wall time)."""
    return part_record(part, dict(resolved.get("precision") or {}), records[-1].get("wall_s") if records else None)


def mend_record(folder: Path) -> PartRecord:
    """The MEND hypernetwork's training, from its checkpoint's ``mend.json``."""
    from editscope.editors.mend.checkpoint import read_meta

    meta = read_meta(folder)
    precision = meta.get("precision") or {}
    return part_record("mend training", dict(precision.get("hardware") or {}), meta.get("wall_s"), meta.get("torch_threads"))


def mixed(parts: Sequence[PartRecord]) -> list[str]:
    """What differs between the parts (``machine``, ``precision``, ``torch``): their numbers were measured apart."""
    return [name for name in ("machine", "precision", "torch") if len({getattr(p, name) for p in parts}) > 1]

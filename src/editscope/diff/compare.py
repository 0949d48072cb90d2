"""Two checkpoints compared matrix by matrix: ‖W_A‖_F, ‖W_B‖_F, ‖W_B − W_A‖_F and the relative change.

Both tensors are read in blocks of rows (``diff.sources``) and the three sums of squares are
accumulated in float64, so the result does not depend on the checkpoints' dtype beyond their
stored values, and a checkpoint compared with itself gives exactly zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from editscope.diff.sources import CheckpointError, TensorSource

BLOCK_ELEMENTS = 1 << 24  # 16M elements: 64 MB of fp32 per block and side
_LAYER = re.compile(r"^(?P<prefix>.*?)\.(?P<layer>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class MatrixDiff:
    """One tensor of both checkpoints.

    Attributes:
        name: the tensor's name; kind: its matrix type (``mlp.down_proj``, ``model.embed_tokens``);
        layer: the block index, ``None`` outside the blocks; fro_a, fro_b: ‖W_A‖_F and ‖W_B‖_F;
        delta_fro: ‖W_B − W_A‖_F; relative: delta_fro / fro_a; norm_change: (fro_b − fro_a) / fro_a.
    """

    name: str
    kind: str
    layer: int | None
    shape: tuple[int, ...]
    fro_a: float
    fro_b: float
    delta_fro: float

    @property
    def relative(self) -> float:
        return self.delta_fro / self.fro_a if self.fro_a > 0 else math.inf if self.delta_fro else 0.0

    @property
    def norm_change(self) -> float:
        return (self.fro_b - self.fro_a) / self.fro_a if self.fro_a > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "shape": list(self.shape), "relative": self.relative, "norm_change": self.norm_change}


@dataclass(frozen=True)
class KindSummary:
    """The matrices of one type: count, mean norms, mean relative change and norm change."""

    kind: str
    count: int
    mean_fro_a: float
    mean_fro_b: float
    mean_relative: float
    mean_norm_change: float
    rising: int


def matrix_kind(name: str) -> tuple[str, int | None]:
    """(type, layer) of a tensor name: ``model.layers.4.mlp.down_proj.weight`` -> (``mlp.down_proj``, 4)."""
    stem = name[: -len(".weight")] if name.endswith(".weight") else name
    match = _LAYER.match(stem)
    if match is None:
        return stem, None
    return match["rest"], int(match["layer"])


def check_comparable(a: TensorSource, b: TensorSource, names: Sequence[str]) -> None:
    """Same architecture (where both have a ``config.json``), same tensors, same shapes; else a clear error."""
    if a.config is not None and b.config is not None:
        arch_a = (a.config.get("model_type"), a.config.get("architectures"))
        arch_b = (b.config.get("model_type"), b.config.get("architectures"))
        if arch_a != arch_b:
            raise CheckpointError(f"different architectures: {a.label} is {arch_a}, {b.label} is {arch_b}")
    only_a = sorted(set(a.info) - set(b.info))
    only_b = sorted(set(b.info) - set(a.info))
    if only_a or only_b:
        parts = [f"only in {src.label}: {', '.join(n[:3])}{' ...' if len(n) > 3 else ''} ({len(n)})" for src, n in ((a, only_a), (b, only_b)) if n]
        raise CheckpointError("the checkpoints hold different tensors; " + "; ".join(parts))
    for name in names:
        if a.info[name].shape != b.info[name].shape:
            raise CheckpointError(f"{name}: shape {a.info[name].shape} in {a.label} but {b.info[name].shape} in {b.label}")


@torch.no_grad()
def tensor_diff(a: TensorSource, b: TensorSource, name: str, block_elements: int = BLOCK_ELEMENTS) -> MatrixDiff:
    """Sums of squares of A, B and B − A over ``name``, block by block, in float64."""
    sq_a = sq_b = sq_d = 0.0
    for block_a, block_b in zip(a.row_blocks(name, block_elements), b.row_blocks(name, block_elements), strict=True):
        da, db = block_a.double(), block_b.double()
        sq_a += float(da.square().sum())
        sq_b += float(db.square().sum())
        sq_d += float((db - da).square().sum())
    kind, layer = matrix_kind(name)
    return MatrixDiff(name, kind, layer, a.info[name].shape, math.sqrt(sq_a), math.sqrt(sq_b), math.sqrt(sq_d))


def diff_checkpoints(
    a: TensorSource, b: TensorSource, *, all_tensors: bool = False, block_elements: int = BLOCK_ELEMENTS
) -> list[MatrixDiff]:
    """Every matrix (every tensor with ``all_tensors``) of both checkpoints, in A's order."""
    names = [n for n in a.names() if all_tensors or len(a.info[n].shape) >= 2]
    check_comparable(a, b, names)
    return [tensor_diff(a, b, name, block_elements) for name in names]


def diffs_from_records(first: Mapping[str, float], last: Mapping[str, float]) -> list[MatrixDiff]:
    """:class:`MatrixDiff` rows from two metric records with ``weight/<param>/fro`` and ``/delta_fro``
    keys (e.g. a post-training run's first and last): A is the first record's matrix, B the last's."""
    rows = []
    for key, fro_a in first.items():
        if key.startswith("weight/") and key.endswith("/fro"):
            name = key[len("weight/") : -len("/fro")]
            kind, layer = matrix_kind(name)
            rows.append(MatrixDiff(name, kind, layer, (), fro_a, last[key], last.get(f"weight/{name}/delta_fro", 0.0)))
    return rows


def summarize_kinds(rows: Iterable[MatrixDiff]) -> list[KindSummary]:
    """One :class:`KindSummary` per matrix type, in first-seen order."""
    groups: dict[str, list[MatrixDiff]] = {}
    for row in rows:
        groups.setdefault(row.kind, []).append(row)
    out = []
    for kind, members in groups.items():
        n = len(members)
        out.append(
            KindSummary(
                kind=kind,
                count=n,
                mean_fro_a=sum(m.fro_a for m in members) / n,
                mean_fro_b=sum(m.fro_b for m in members) / n,
                mean_relative=sum(m.relative for m in members) / n,
                mean_norm_change=sum(m.norm_change for m in members) / n,
                rising=sum(m.fro_b > m.fro_a for m in members),
            )
        )
    return out

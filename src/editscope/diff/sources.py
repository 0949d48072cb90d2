"""Checkpoints as streams of tensors: a safetensors file, an HF folder (one file or shards), a bundled
model by name, or a run folder with a ``model/`` folder (``editscope posttrain`` writes one).

Nothing is loaded up front: :meth:`TensorSource.row_blocks` reads one block of rows of one tensor
at a time through ``safetensors.safe_open``, so comparing two large checkpoints needs memory for
a block of each, not for either model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

from editscope.errors import EditscopeError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(EditscopeError, ValueError):
    """A checkpoint cannot be read or cannot be compared; the message names it."""


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TensorSource:
    """The tensors of one checkpoint: name -> file, with shapes and dtypes from the file headers."""

    label: str
    files: dict[str, Path]
    info: dict[str, TensorInfo]
    config: dict[str, Any] | None

    def names(self) -> list[str]:
        return list(self.info)

    def row_blocks(self, name: str, max_elements: int) -> Iterator[Tensor]:
        """The tensor ``name`` in consecutive blocks of whole rows (dim 0), each of at most
        ``max_elements`` elements (at least one row); a 0-d or 1-d tensor comes whole."""
        shape = self.info[name].shape
        with safe_open(str(self.files[name]), framework="pt") as handle:
            if len(shape) < 2:
                yield read_block(handle, name, None, None)
                return
            row = max(1, math.prod(shape[1:]))
            step = max(1, max_elements // row)
            for start in range(0, shape[0], step):
                yield read_block(handle, name, start, min(start + step, shape[0]))


def read_block(handle: Any, name: str, start: int | None, stop: int | None) -> Tensor:
    """Rows ``[start, stop)`` of tensor ``name`` of an open safetensors file (all of it for ``None``)."""
    if start is None:
        return handle.get_tensor(name)
    return handle.get_slice(name)[start:stop]


def _header(path: Path) -> dict[str, TensorInfo]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            out = {}
            for name in handle.keys():
                sliced = handle.get_slice(name)
                out[name] = TensorInfo(tuple(sliced.get_shape()), str(sliced.get_dtype()))
            return out
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _folder_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
        files = sorted({folder / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing[:3])}")
        return files
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(others[:3])}: only safetensors checkpoints are read)" if others else ""
        raise CheckpointError(f"{folder}: no safetensors weights{hint}")
    return files


def resolve_path(spec: str) -> Path:
    """The file or folder a checkpoint argument names (bundled names are converted on first use)."""
    from editscope.models.bundled import BUNDLED_MODELS, ensure_bundled

    if spec in BUNDLED_MODELS and not Path(spec).exists():
        return ensure_bundled(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {spec!r}: no such file or folder, and not a bundled model ({', '.join(BUNDLED_MODELS.names())})")
    if path.is_dir() and not any(path.glob("*.safetensors")) and (path / "model").is_dir():
        return path / "model"  # a run folder: its final weights
    return path


def run_source(spec: str) -> TensorSource | None:
    """An editing run folder (``RUN`` or ``RUN@EDITS``) as a checkpoint: its base model's tensors, the edited
    matrices replaced by ``W0 + C`` at that checkpoint (written once to a scratch file, removed at exit); ``None``
    for anything that is not a run folder."""
    import atexit
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from editscope.runs.export import edited_weight, parse_run_ref, run_deltas
    from editscope.runs.store import RunStore

    ref = parse_run_ref(spec)
    if ref is None:
        return None
    deltas, edits, _ = run_deltas(ref)
    base = open_source(RunStore(ref.folder).saved_config().model)
    missing = [name for name in deltas if name not in base.info]
    if missing:
        raise CheckpointError(f"{spec}: its base model has no tensor {missing[0]!r}")
    scratch = Path(tempfile.mkdtemp(prefix="editscope-diff-"))
    atexit.register(shutil.rmtree, scratch, True)
    edited = {}
    for name, delta in deltas.items():
        with safe_open(str(base.files[name]), framework="pt") as handle:
            w0 = handle.get_tensor(name)
        edited[name] = edited_weight(w0, delta).contiguous()
    file = scratch / f"edited-{edits}.safetensors"
    save_file(edited, str(file))
    files = {**base.files, **dict.fromkeys(edited, file)}  # same names, shapes and dtypes as the base's
    return TensorSource(label=spec, files=files, info=dict(base.info), config=base.config)


def open_source(spec: str) -> TensorSource:
    """A :class:`TensorSource` for a checkpoint argument (see the module docstring)."""
    run = run_source(spec)
    if run is not None:
        return run
    path = resolve_path(spec)
    files = [path] if path.is_file() else _folder_files(path)
    config_path = (path.parent if path.is_file() else path) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    tensor_files: dict[str, Path] = {}
    info: dict[str, TensorInfo] = {}
    for file in files:
        for name, tensor_info in _header(file).items():
            if name in info:
                raise CheckpointError(f"{spec}: tensor {name!r} is stored twice ({tensor_files[name].name}, {file.name})")
            tensor_files[name] = file
            info[name] = tensor_info
    if not info:
        raise CheckpointError(f"{spec}: holds no tensors")
    return TensorSource(label=spec, files=tensor_files, info=info, config=config)

"""The edited model out of its run folder: ``RUN`` / ``RUN@EDITS`` as a model, an HF export, a delta patch.

A run folder holds the base model's name and fingerprint (``config.yaml``, ``state/state.json``) and the
cumulative delta ``C`` of the edited matrices, the latest in ``state/`` and one per checkpoint in
``checkpoints/`` (``RunConfig.keep_deltas``). The edited model is ``W0 + C``, added in the parameter's
dtype exactly as the run added it, so an export, a patch applied to the base and the run's own model
hold the same bits.

* :func:`edited_model` loads ``RUN[@EDITS]`` as a :class:`~editscope.models.loading.LoadedModel`
  (``models.load`` hands run folders here, so every command that takes a model takes a run);
* :func:`export_run` writes a standard Hugging Face folder (config, generation config, tokenizer,
  safetensors, a model card) that transformers loads alone, or with ``delta_only`` a safetensors patch
  of the changed matrices carrying the base's fingerprint;
* :func:`apply_patch` adds such a patch to a base model, refusing a base with another fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from editscope.config import ConfigError
from editscope.models.fingerprint import model_fingerprint
from editscope.runs.store import CHECKPOINTS, CONFIG, STATE, RunStore, read_metrics_file
from editscope.storage import atomic_directory

logger = logging.getLogger(__name__)

PATCH_FORMAT = "editscope-delta-1"
_REF = re.compile(r"^(?P<folder>.+?)@(?P<edits>\d+)$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RunRef:
    """An editing run folder and the checkpoint asked for (``None``: its latest)."""

    folder: Path
    edits: int | None = None

    def __str__(self) -> str:
        return f"{self.folder}@{self.edits}" if self.edits is not None else str(self.folder)


def is_run_folder(path: Path) -> bool:
    """An editing run folder: ``config.yaml`` naming an editor and ``state/``, and no model of its own
    (``config.json``); a post-training run folder (its config names a ``mode``) is not one."""
    if not ((path / CONFIG).is_file() and (path / STATE).is_dir()) or (path / "config.json").is_file():
        return False
    try:
        config = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and "editor" in config and "mode" not in config


def parse_run_ref(spec: str) -> RunRef | None:
    """``RUN`` or ``RUN@EDITS`` where RUN is an editing run folder; ``None`` for anything else."""
    match = _REF.match(spec)
    folder, edits = (Path(match["folder"]), int(match["edits"])) if match else (Path(spec), None)
    folder = folder.expanduser()
    return RunRef(folder, edits) if is_run_folder(folder) else None


def run_deltas(ref: RunRef) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """The cumulative delta at ``ref``'s checkpoint, its edit count and the run's saved progress."""
    store = RunStore(ref.folder)
    progress = store.saved_progress()
    if progress is None:
        raise ConfigError(f"{ref.folder}: no saved state yet (the run has not reached its first checkpoint)")
    latest = int(progress["edits"])
    if ref.edits is None or ref.edits == latest:
        return store.latest_deltas(), latest, progress
    if ref.edits == 0:  # the unedited model
        return {}, 0, progress
    kept = store.checkpoint_deltas(ref.edits)
    if kept is None:
        counts = sorted(int(p.stem) for p in (ref.folder / CHECKPOINTS).glob("*.safetensors") if p.stem.isdigit())
        recorded = [int(r["edits"]) for r in read_metrics_file(ref.folder / "metrics.jsonl")]
        raise ConfigError(
            f"{ref}: no delta kept at {ref.edits} edits; kept: {', '.join(map(str, [*counts, latest] if latest not in counts else counts)) or 'none'}"
            f" (checkpoints recorded: {', '.join(map(str, recorded))}; runs keep one per checkpoint unless keep_deltas is off)"
        )
    return kept, ref.edits, progress


def edited_weight(w0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``W0 + C`` in ``W0``'s dtype and device: the run's own addition (``SequentialRun._set``), so every copy of
    an edited matrix (loaded, exported, patched, diffed) holds the same bits."""
    return w0 + delta.to(device=w0.device, dtype=w0.dtype)


def add_deltas(model: torch.nn.Module, deltas: dict[str, torch.Tensor]) -> None:
    """:func:`edited_weight` for every matrix in ``deltas``, in place."""
    with torch.no_grad():
        for name, delta in deltas.items():
            param = model.get_parameter(name)
            param.copy_(edited_weight(param.detach(), delta))


def edited_model(ref: RunRef, *, dtype: torch.dtype | None = None, found: tuple[dict[str, torch.Tensor], int, dict[str, Any]] | None = None):
    """The run's model at ``ref``'s checkpoint: the base it was made from with the cumulative delta added
    (``found``: :func:`run_deltas` of ``ref`` where the caller has read it already)."""
    from editscope.models import load

    config = RunStore(ref.folder).saved_config()
    deltas, edits, progress = found or run_deltas(ref)
    loaded = load(config.model, dtype=dtype)
    base = model_fingerprint(loaded.model)
    if progress.get("fingerprint") not in (None, base):
        raise ConfigError(f"{ref}: made from a model with fingerprint {progress['fingerprint']}; {config.model} now loads as {base}")
    add_deltas(loaded.model, deltas)
    logger.info("%s: %s with %d edits of %s (%d matrices changed)", ref, config.model, edits, config.editor, len(deltas))
    return dataclasses.replace(loaded, name=str(ref))


def model_card(ref: RunRef, edits: int, base_fingerprint: str, changed: list[str]) -> str:
    """``README.md`` of an export: base model and fingerprint, editor and its resolved settings, the edits and
    the edit set, and the run's health figures at that checkpoint."""
    from editscope.runs.summary import records_until, summarize_records

    store = RunStore(ref.folder)
    config = store.saved_config()
    resolved = store.saved_resolved()
    records = read_metrics_file(ref.folder / "metrics.jsonl")
    row = summarize_records(records_until(records, edits, str(ref.folder))) if any(r["edits"] == edits for r in records) else {}
    health = "\n".join(
        f"| {label} | {row[key]:.4g} |" for key, label in (
            ("edited_fro_growth_pct", "edited matrices' mean ‖W‖_F growth, %"), ("unedited_max_change_pct", "largest change of an unedited matrix, %"),
            ("efficacy", "retained efficacy"), ("edit_score", "edit score"), ("ppl_change_pct", "held-out perplexity change, %"),
            ("downstream_acc_change_pts", "downstream accuracy change, points"),
        ) if isinstance(row.get(key), float) and row[key] == row[key]
    )  # fmt: skip
    settings = yaml.safe_dump(resolved.get("editor", {}), sort_keys=True).strip()
    return (
        f"---\nlibrary_name: transformers\nbase_model: {config.model}\ntags: [knowledge-editing, editscope, {config.editor}]\n---\n\n"
        f"# {config.model} after {edits} sequential {config.editor} edits\n\n"
        f"Exported by editscope from the run folder `{ref.folder}` at its checkpoint of **{edits}** edits "
        f"(of {config.edits} planned, batches of {config.batch_size}).\n\n"
        f"- base model: `{config.model}`, fingerprint `{base_fingerprint}`\n"
        f"- editor: `{config.editor}`; edit set: `{config.data}` (seed {config.seed}{', shuffled' if config.shuffle else ''})\n"
        f"- changed matrices ({len(changed)}): {', '.join(f'`{n}`' for n in changed) or 'none'}\n\n"
        + (f"## Health at this checkpoint, against the unedited model\n\n| figure | value |\n|---|---|\n{health}\n\n" if health else "")
        + f"## The editor's resolved settings\n\n```yaml\n{settings}\n```\n"
    )


def _save_model(loaded: Any, out: Path, card: str, dtype: torch.dtype | None) -> Path:
    with atomic_directory(out) as tmp:
        model = loaded.model.to(dtype) if dtype is not None else loaded.model
        model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return out


def export_run(ref: RunRef, out: str | Path, *, dtype: str | None = None, delta_only: bool = False) -> Path:
    """Write the model at ``ref``'s checkpoint as an HF folder, or only its changed matrices as a patch file."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    store = RunStore(ref.folder)
    config = store.saved_config()
    deltas, edits, progress = run_deltas(ref)
    base_fingerprint = str(progress.get("fingerprint"))
    if delta_only:
        meta = {"format": PATCH_FORMAT, "base_model": config.model, "base_fingerprint": base_fingerprint,
                "editor": config.editor, "edits": str(edits), "run": str(ref.folder)}  # fmt: skip
        with atomic_directory(out) as tmp:
            save_file({k: v.contiguous() for k, v in deltas.items()}, str(tmp / "delta.safetensors"), metadata=meta)
            (tmp / "README.md").write_text(model_card(ref, edits, base_fingerprint, sorted(deltas)), encoding="utf-8")
        return out / "delta.safetensors"
    loaded = edited_model(ref, found=(deltas, edits, progress))
    return _save_model(loaded, out, model_card(ref, edits, base_fingerprint, sorted(deltas)), DTYPES.get(dtype or ""))


def read_patch(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A delta patch's tensors and metadata; anything else is refused."""
    path = Path(path)
    if path.is_dir():
        path = path / "delta.safetensors"
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises several types for a file that is not one
        raise ConfigError(f"patch {path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != PATCH_FORMAT or "base_fingerprint" not in meta:
        raise ConfigError(f"patch {path}: not an editscope delta patch (written by `editscope export --delta-only`)")
    return tensors, meta


def apply_patch(base: str, patch: str | Path, out: str | Path) -> Path:
    """Add a delta patch to ``base`` and save the result as an HF folder; a base whose fingerprint is not the
    patch's is refused before anything is written."""
    from editscope.models import load

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder")
    tensors, meta = read_patch(patch)
    loaded = load(base)
    fingerprint = model_fingerprint(loaded.model)
    if fingerprint != meta["base_fingerprint"]:
        raise ConfigError(
            f"{base}: fingerprint {fingerprint}, but the patch {patch} was made for {meta.get('base_model')} with fingerprint "
            f"{meta['base_fingerprint']}; refusing to apply it to another model"
        )
    names = {name for name, _ in loaded.model.named_parameters()}
    missing = [name for name in tensors if name not in names]
    if missing:
        raise ConfigError(f"patch {patch}: {base} has no parameter {missing[0]!r}")
    add_deltas(loaded.model, tensors)
    card = (f"# {meta.get('base_model')} with an editscope delta patch\n\n{meta.get('edits')} `{meta.get('editor')}` edits from "
            f"`{meta.get('run')}`, applied to `{base}` (fingerprint `{fingerprint}`).\n\nPatch metadata:\n\n```json\n"
            f"{json.dumps(meta, indent=2, sort_keys=True)}\n```\n")  # fmt: skip
    return _save_model(loaded, out, card, None)

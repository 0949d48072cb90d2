"""``editscope export`` and ``editscope apply``: the edited model out of its run folder, for the ecosystem's tools."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from editscope.errors import EditscopeError


def cmd_export(args: argparse.Namespace) -> int:
    from editscope.runs.export import RunRef, export_run, is_run_folder, parse_run_ref

    ref = parse_run_ref(args.run)
    if ref is None:
        raise EditscopeError(f"{args.run}: not an editing run folder (config.yaml and state/); give RUN or RUN@EDITS")
    if args.at is not None:
        ref = RunRef(ref.folder, args.at)
    assert is_run_folder(ref.folder)
    written = export_run(ref, args.out, dtype=args.dtype, delta_only=args.delta_only)
    size = sum(p.stat().st_size for p in (written.parent if written.is_file() else written).rglob("*") if p.is_file()) / 2**20
    kind = "delta patch" if args.delta_only else "Hugging Face model folder"
    print(f"{ref}: {kind} {written} ({size:.1f} MiB)")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from editscope.runs.export import apply_patch

    written = apply_patch(args.base, args.patch, args.out)
    print(f"{args.patch} applied to {args.base}: {written}")
    return 0


def add_export_commands(sub: Any) -> None:
    """Register ``export`` and ``apply`` on the CLI's subparsers."""
    export = sub.add_parser("export", help="the edited model of a run folder as a standard HF folder (or a delta patch)")
    export.add_argument("run", help="run folder, or RUN@EDITS for a recorded checkpoint")
    export.add_argument("--out", type=Path, required=True, help="new (or empty) folder to write")
    export.add_argument("--at", type=int, default=None, metavar="EDITS", help="the checkpoint at this many edits (default: the latest)")
    export.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="weights' dtype (default: the base model's)")
    export.add_argument("--delta-only", action="store_true",
                        help="write only the changed matrices (delta.safetensors, with the base's fingerprint) for `editscope apply`")
    export.set_defaults(func=cmd_export)

    apply = sub.add_parser("apply", help="add a delta patch (export --delta-only) to its base model and save the result")
    apply.add_argument("base", help="the base model (bundled name, HF folder); refused unless its fingerprint is the patch's")
    apply.add_argument("patch", type=Path, help="delta.safetensors, or the folder holding it")
    apply.add_argument("--out", type=Path, required=True, help="new (or empty) folder to write")
    apply.set_defaults(func=cmd_apply)

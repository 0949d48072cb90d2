"""``editscope sweep`` and ``editscope stats``: grids of runs and sharded statistics, on Ray where installed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from editscope.cli.output import emit_json, format_table


def cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from editscope.sweep import expand, load_sweep_config, run_sweep
    from editscope.sweep.runner import pending_runs

    sweep = load_sweep_config(args.sweep)
    runs = expand(sweep)
    if args.dry_run:
        todo, skipped = pending_runs(runs)
        done = {o.name for o in skipped}
        rows = [{"run": r.name, "folder": r.config.out, "status": "complete" if r.name in done else "to run"} for r in runs]
        if args.json:
            emit_json(rows)
        else:
            print(format_table([[r["run"], r["status"], r["folder"]] for r in rows], ["run", "status", "folder"]))
        return 0
    bar = tqdm(total=len(runs), desc="sweep", unit="run", dynamic_ncols=True, disable=None)

    def finished(outcome: Any) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{outcome.name}: {outcome.status}", refresh=False)

    try:
        report = run_sweep(sweep, backend=args.backend, ray_address=args.ray_address, listener=finished)
    finally:
        bar.close()
    if args.json:
        from dataclasses import asdict

        emit_json({"backend": report.backend, "seconds": round(report.seconds, 2), "runs": [asdict(o) for o in report.outcomes]})
    else:
        rows = [[o.name, o.status, str(o.attempts), f"{o.seconds:.1f}", o.error or ""] for o in report.outcomes]
        print(format_table(rows, ["run", "status", "attempts", "seconds", "error"]))
        counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
        print(f"\n{len(report.outcomes)} runs under {sweep.root} ({counts}) in {report.seconds:.0f} s on {report.backend}")
    return 1 if report.failed else 0


def cmd_stats(args: argparse.Namespace) -> int:
    from editscope.sweep import Resources
    from editscope.sweep.stats import compute_statistics, stats_config_for_editor

    layers = tuple(int(x) for x in args.layers.split(",") if x.strip()) if args.layers else None
    config = stats_config_for_editor(
        args.model, args.editor, layers=layers, corpus=args.corpus, n_samples=args.samples, seq_len=args.seq_len,
        shards=args.shards, device_map=args.device_map, resources=Resources(num_cpus=args.num_cpus, num_gpus=args.num_gpus),
    )
    result = compute_statistics(config, backend=args.backend, ray_address=args.ray_address)
    if args.json:
        emit_json({"files": {str(k): str(v) for k, v in result.files.items()}, "cached": list(result.cached),
                    "computed": list(result.computed), "shards": result.shards, "seconds": round(result.seconds, 2)})
        return 0
    print(f"{config.model}: E[k k^T] of layers {', '.join(map(str, config.layers))} over {config.n_samples} x {config.seq_len} tokens "
          f"({len(result.computed)} computed in {result.shards} shard(s), {len(result.cached)} already cached) in {result.seconds:.1f} s")
    for layer, path in result.files.items():
        print(f"  layer {layer}: {path}")
    return 0


def add_scale_commands(sub: Any) -> None:
    """Register ``sweep`` and ``stats`` on the CLI's subparsers."""
    sweep = sub.add_parser("sweep", help="a grid of runs from SWEEP.yaml, on Ray (local or a cluster) or in process; finished runs skipped")
    sweep.add_argument("sweep", type=Path, help="sweep file: base run config, grid, root, resources, max_retries")
    sweep.add_argument("--ray-address", default=None, metavar="ADDR", help="join this Ray cluster (e.g. ray://head:10001 or auto); default: a local Ray instance")
    sweep.add_argument("--backend", choices=("auto", "ray", "inprocess"), default="auto", help="auto: Ray where installed, else one run after another here")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and which are already complete; run nothing")
    sweep.add_argument("--json", action="store_true")
    sweep.set_defaults(func=cmd_sweep)

    stats = sub.add_parser("stats", help="second-moment statistics E[k k^T] for an editor's layers, sharded over Ray; writes the editors' cache")
    stats.add_argument("--model", default="smollm2-135m")
    stats.add_argument("--editor", default="memit", help="whose settings (layers, corpus, samples, length) to use (default memit)")
    stats.add_argument("--layers", default=None, help="comma-separated layers (default: the editor's)")
    stats.add_argument("--samples", type=int, default=None, help="token windows (default: the editor's stats_samples)")
    stats.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: the editor's stats_seq_len)")
    stats.add_argument("--corpus", default=None, help="text source (default: the editor's stats_corpus)")
    stats.add_argument("--shards", type=int, default=1, help="split the pass into this many shards (Ray tasks)")
    stats.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per shard task (its torch threads)")
    stats.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per shard task (use with --device-map)")
    stats.add_argument("--device-map", default=None, help="where each shard's model runs: cpu, cuda:0, auto")
    stats.add_argument("--ray-address", default=None, metavar="ADDR", help="join this Ray cluster; default: a local Ray instance")
    stats.add_argument("--backend", choices=("auto", "ray", "inprocess"), default="auto")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

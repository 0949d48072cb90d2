"""``editscope findings``: run what each claim needs, judge it, write findings.html."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from editscope.cli.output import emit_json, format_table


def cmd_findings(args: argparse.Namespace) -> int:
    from editscope.findings import FindingsConfig, run_findings
    from editscope.findings.page import PAGE, findings_json
    from editscope.findings.plan import budget_of

    editors = tuple(e.strip() for e in args.editors.split(",") if e.strip()) if args.editors else budget_of(args.budget).editors
    config = FindingsConfig(against=str(args.against) if args.against else None,
        model=args.model, budget=args.budget, edits=args.edits, out=str(args.out), editors=editors, data=args.data, mend_checkpoint=args.mend_checkpoint,
        downstream_dir=str(args.downstream_dir) if args.downstream_dir else None, screen_tasks=not args.all_tasks, backend=args.backend,
        ray_address=args.ray_address, threads=args.threads, device=args.device,
    )  # fmt: skip
    findings = run_findings(config)
    if args.json:
        emit_json(findings_json(findings))
        return 0
    print(format_table([[f"claim {v.claim}", v.subject, v.verdict, v.reason] for v in findings.verdicts], ["claim", "subject", "verdict", "measured"]))
    print(f"\nFindings: {Path(args.out) / PAGE}")
    return 0


def add_findings_parser(sub: Any) -> None:
    from editscope.findings.plan import BUDGETS, EDITORS

    findings = sub.add_parser("findings", help="each claim of the research measured on a model, with a verdict (findings.html)")
    findings.add_argument("--model", default="smollm2-135m")
    findings.add_argument("--budget", default="standard", choices=list(BUDGETS),
                          help="quick: a smoke check in minutes; standard: about an hour on a 2-core CPU (50 edits per editor, 150 post-training steps, MEND trained 200 steps; docs/findings.md has the measured time); full: the papers' scale, for a GPU")  # fmt: skip
    findings.add_argument("--edits", type=int, default=None, metavar="N",
                          help="sequential edits per editor instead of the budget's (more edits show slower decay, such as ROME's at 100 on SmolLM2-135M, in proportionally more time)")  # fmt: skip
    findings.add_argument("--out", type=Path, required=True, help="findings folder (run folders, report, findings.html); reused on a rerun")
    findings.add_argument("--editors", default=None, help=f"editor families (default {','.join(EDITORS)})")
    findings.add_argument("--data", default="demo", help="edit set: a CounterFact/zsRE/JSONL file, or 'demo' (the runs edit its first requests, MEND trains on the rest)")
    findings.add_argument("--mend-checkpoint", default=None, metavar="DIR",
                          help="trained MEND hypernetwork for the model (default: train one into OUT/mend for the budget's steps, on the edit set without the edited requests)")
    findings.add_argument("--downstream-dir", type=Path, default=None, metavar="DIR", help="few-shot GLUE/MMLU task files (claim 4)")
    findings.add_argument("--all-tasks", action="store_true",
                          help="measure every downstream task after editing (default: only those above chance on the unedited model, which claim 4 reads)")
    findings.add_argument("--backend", default="auto", choices=["auto", "ray", "inprocess"], help="where the editing runs go")
    findings.add_argument("--ray-address", default=None)
    findings.add_argument("--threads", type=int, default=1, help="torch threads per editing run")
    findings.add_argument("--device", default="auto", help="device of the post-training runs")
    findings.add_argument("--against", type=Path, default=None, metavar="FOLDER",
                          help="an earlier findings folder (e.g. --budget standard's): the page sets each verdict beside its verdict there")
    findings.add_argument("--json", action="store_true", help="print findings.json instead of the table")
    findings.set_defaults(func=cmd_findings)

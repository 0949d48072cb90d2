"""Draw the MMLU sample bundled with editscope (``src/editscope/data/tasks/mmlu.jsonl``) from the canonical test split.

Usage: python scripts/bundle_mmlu.py MMLU_CSV_DIR [--per-answer 100] [--seed 37]

MMLU_CSV_DIR holds ``test/<subject>_test.csv`` with the header ``question,choice0,choice1,choice2,choice3,answer``
(HF ``cais/mmlu`` written with pandas). The sample is class-balanced (``--per-answer`` questions whose answer is A,
B, C and D each, as the editing-degradation papers balance their subsets), drawn with ``random.Random(seed)`` over
the questions sorted by subject and row, and written one ``{"question", "subject", "choices", "answer"}`` per line.
MMLU (Hendrycks et al., ICLR 2021) is MIT-licensed; the licence travels beside the file.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("csv_dir", type=Path)
    parser.add_argument("--per-answer", type=int, default=100)
    parser.add_argument("--seed", type=int, default=37)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/editscope/data/tasks/mmlu.jsonl")
    args = parser.parse_args()
    rows = []
    for path in sorted((args.csv_dir / "test").glob("*_test.csv")):
        subject = path.name.removesuffix("_test.csv")
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                rows.append({"question": row["question"], "subject": subject,
                             "choices": [row[f"choice{i}"] for i in range(4)], "answer": int(row["answer"])})
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    picked = []
    for answer in range(4):
        picked += [r for r in rows if r["answer"] == answer and all(c.strip() for c in r["choices"])][: args.per_answer]
    rng.shuffle(picked)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    print(f"{args.out}: {len(picked)} questions from {len({r['subject'] for r in picked})} subjects")


if __name__ == "__main__":
    main()

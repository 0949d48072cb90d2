"""Bundled-model load times: first conversion (fresh cache) and a later load in a new process.

Usage: python benchmarks/load_time.py [--model smollm2-135m] [--json]

JSON keys:
  machine          the precision record (CPU capability, native bf16, what auto resolves to)
  model            bundled name
  convert_s        seconds for load() with an empty cache (GGUF dequantization + save + verify)
  second_load_s    seconds for load() in a new process once the folder is cached
  process_s        wall seconds of that whole new process (Python start, imports, load)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from editscope.precision import precision_record

TIMED = "import time; t=time.perf_counter(); from editscope.models import load; s=time.perf_counter(); load({name!r}); print(time.perf_counter()-s)"


def run(name: str, home: str) -> tuple[float, float]:
    env = dict(os.environ, EDITSCOPE_HOME=home)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", TIMED.format(name=name)], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        convert_s, _ = run(args.model, home)
        second_s, process_s = run(args.model, home)
    result = {"machine": precision_record("cpu"), "model": args.model, "convert_s": round(convert_s, 2), "second_load_s": round(second_s, 2), "process_s": round(process_s, 2)}
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()

"""Seconds per checkpoint of each instrument on the bundled model (baseline excluded).

Usage: python benchmarks/instrument_cost.py [--model smollm2-135m] [--repeats 5] [--json]

JSON: {"model", "instruments": {name: {"baseline_s", "measure_s_median", "keys"}}}; a checkpoint is
measured after a MEMIT-sized perturbation of the edited layers so warm starts do real work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from editscope.instruments import INSTRUMENTS
from editscope.instruments.weights import WeightNormsConfig
from editscope.models import load
from editscope.types import WeightDelta

CONFIGS = {"weights": lambda: WeightNormsConfig(edited_layers=(4, 5, 6, 7, 8))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lm = load(args.model)
    out: dict = {"model": args.model, "instruments": {}}
    for name, cls in INSTRUMENTS.items():
        instrument = cls(CONFIGS[name]()) if name in CONFIGS else cls()
        start = time.perf_counter()
        instrument.baseline(lm.model, lm.tokenizer)
        baseline_s = time.perf_counter() - start
        times, keys = [], 0
        for i in range(args.repeats):
            g = torch.Generator().manual_seed(i)
            names = [lm.spec.weight_name(layer) for layer in (4, 5, 6, 7, 8)]
            params = dict(lm.model.named_parameters())
            delta = WeightDelta({n: torch.randn(params[n].shape, generator=g) * 1e-3 for n in names})
            with delta.applied(lm.model):
                start = time.perf_counter()
                keys = len(instrument.measure(lm.model, lm.tokenizer))
                times.append(time.perf_counter() - start)
        out["instruments"][name] = {"baseline_s": round(baseline_s, 3), "measure_s_median": round(statistics.median(times), 4), "keys": keys}
    print(json.dumps(out, indent=2) if args.json else out)


if __name__ == "__main__":
    main()

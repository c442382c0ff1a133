"""Lifetime numbers of docs/reproduce.md under generator v2 next to v1, several seeds each.

    python docs/generator_v2.py [--iterations 64124] [--seeds 0 1 2] [--methods sgs-ars sgs topk]

Each (method, generator, seed) is one `timesim run` of synthetic ResNet-20 on the default chip
(one thread per run); printed as a markdown table of max writes and lifetime extension, with
the spread over seeds under v1 (the run-to-run noise of the workload) next to v2's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import timesim
from timesim.simulate import simulate

METHODS = {
    "sgs-ars": [],
    "sgs": ["controller.wear_leveling=none"],
    "topk": ["controller.selection=topk", "controller.wear_leveling=none"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=64124)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--model", default="resnet20")
    args = ap.parse_args()
    print(f"| {args.model}, {args.iterations} it. | gen | " +
          " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± sd (max writes) | extension |")
    print("|---|---|" + "---|" * len(args.seeds) + "---|---|")
    for method in args.methods:
        hw = timesim.load_hwconfig(None, METHODS[method])
        for gen in (1, 2):
            maxw, ext, secs = [], [], []
            for seed in args.seeds:
                spec = f"synth:{args.model}?iterations={args.iterations}&seed={seed}&gen={gen}"
                t = time.perf_counter()
                report = simulate(hw, spec, threads=1)
                secs.append(time.perf_counter() - t)
                maxw.append(report["lifetime"]["max_writes"])
                ext.append(report["lifetime"]["extension"])
            m = np.array(maxw, float)
            print(f"| {method} | {gen} | " + " | ".join(str(x) for x in maxw) +
                  f" | {m.mean():.1f} ± {m.std(ddof=1) if m.size > 1 else 0:.1f} | "
                  f"{np.mean(ext):.1f}× | ({np.mean(secs):.1f} s per run)", flush=True)


if __name__ == "__main__":
    main()

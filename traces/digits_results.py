"""The paper's Table 1 at digits scale: accuracy, writes and lifetime under dense, topk and sgs.

    python traces/digits_results.py --iterations 64000 [--model mlp|lenet] > results.md

Every run trains from the same seed through SparseUpdate on the bundled TIME chip, co-simulating
live (no trace is written): the paper's three methods, dense SGD (baseline), conventional GS
(top-0.1% with local accumulation, no wear levelling) and SGS-ARS ((SI, R) = (1024, 32)).
"""

import argparse
import time

import timesim
from timesim.examples.digits import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=64000)
    ap.add_argument("--model", choices=("mlp", "lenet"), action="append")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    print("| model | policy | test accuracy | max writes | lifetime extension | balanced bound "
          "| binding layer | mean sparsity | ARS swaps | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in a.model or ["mlp", "lenet"]:
        for policy, wl in (("dense", "none"), ("topk", "none"), ("sgs", "ars")):
            hw = timesim.load_hwconfig(None, [f"controller.selection={policy}",
                                              f"controller.wear_leveling={wl}", *a.set])
            t = time.perf_counter()
            r = train(model, iterations=a.iterations, hw=hw)
            rep = r.report
            lt = rep["lifetime"]
            by = rep["writes"]["by_layer"]
            cells = {l["name"]: l["rows"] * l["cols"] for l in rep["trace"]["layers"]}
            sparsity = sum(by[n]["sparsity"] * cells[n] for n in by) / sum(cells.values())
            print(f"| {model} | {policy} + {wl} | {r.test_accuracy:.3f} | {rep['writes']['max']} "
                  f"| {lt['extension']:.1f}x | {lt['balanced_extension']:.1f}x "
                  f"| {lt['binding_layer']} | {sparsity:.4f} | {rep['ars']['swaps']} "
                  f"| {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()

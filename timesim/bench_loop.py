"""``synth:fit`` with the closed loop against the open loop (docs/fidelity.md, "The closed
loop"): the same ResNet-20-shaped fitted model as ``bench.bench_fit`` plus each layer's loop
parameters, under each policy, the two runs alternating, best of ``reps``."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .config import load_hwconfig
from .simulate import simulate


def fitted_model(path: Path, loop: bool = False) -> Path:
    """A fitted model with ResNet-20's shapes and every part a fit writes: drifting
    importances, each cell's own scale, a drifting direction with its strength by RMS bin,
    gates and the batch's loudness; with ``loop``, each layer's closed loop too (κ, ρ of the
    digits MLP's dense fit, h along the row importance). ``bench.bench_fit`` times it
    without the loop."""
    from .trace.fitted import GATE_PROBS, write_model
    from .trace.models import resnet20

    rng = np.random.default_rng(0)
    layers, arrays = [], {}
    gate = np.quantile(rng.lognormal(0, 0.5, 100000), GATE_PROBS)
    loud = np.quantile(rng.lognormal(0, 0.66, 100000), GATE_PROBS)
    for layer in resnet20():
        layers.append({"layer": layer.to_dict(), "bias": 0.1, "bias_exponent": 0.2,
                       "bias_by_rms": [[0.01, 0.15], [0.1, 0.12], [1.0, 0.05], [3.0, 0.02]],
                       "tau_direction": 2000.0, "row_drift": 0.2, "col_drift": 0.2,
                       "tau_importance": 300.0,
                       "scale": {"knots": [[0, 1e-3], [1000, 5e-4]], "gamma": 0.5}})
        n = layer.name
        arrays[f"{n}/row"] = np.exp(rng.standard_normal(layer.rows)).astype(np.float32)
        arrays[f"{n}/col"] = np.exp(rng.standard_normal(layer.cols)).astype(np.float32)
        arrays[f"{n}/cell"] = np.exp(
            0.5 * rng.standard_normal((layer.rows, layer.cols))).astype(np.float32)
        arrays[f"{n}/row_gate"] = arrays[f"{n}/col_gate"] = gate
        arrays[f"{n}/loud_gate"] = loud
        if loop:
            layers[-1]["loop"] = {"kappa": 0.35, "rho": 0.87}
            h = arrays[f"{n}/row"].astype(np.float64)
            arrays[f"{n}/loop_h"] = (h / np.sqrt((h * h).sum())).astype(np.float32)
    doc = {"format": "timesim-fit", "version": 1, "model": "resnet20-shaped", "dataset": "",
           "batch_size": 128, "source": {"trace": "", "iterations": 1000}, "layers": layers}
    write_model(path, doc, arrays)
    return path


def bench_loop(iterations: int, reps: int, threads: int | None = None,
               selections=("sgs", "topk")) -> dict:
    """Seconds per run of ``synth:fit`` with loop=on and loop=off, and their ratio, per
    selection (sgs with ars; topk without wear levelling)."""
    out = {"iterations": iterations, "threads": threads or os.cpu_count() or 1}
    with tempfile.TemporaryDirectory(prefix="timesim-bench-") as tmp:
        model = fitted_model(Path(tmp) / "fit.yaml", loop=True)
        for sel in selections:
            hw = load_hwconfig(None, [f"controller.selection={sel}",
                                      "controller.wear_leveling=" +
                                      ("ars" if sel == "sgs" else "none")])
            src = f"synth:fit?model={model}&iterations={iterations}"
            for loop in ("off", "on"):                                      # warm-up
                simulate(hw, src.replace(f"={iterations}", "=64") + f"&loop={loop}",
                         threads=threads)
            best = {"off": float("inf"), "on": float("inf")}
            for _ in range(reps):                                           # alternating
                for loop in ("off", "on"):
                    t = time.perf_counter()
                    simulate(hw, f"{src}&loop={loop}", threads=threads)
                    best[loop] = min(best[loop], time.perf_counter() - t)
            out[sel] = {"open_s": best["off"], "loop_s": best["on"],
                        "ratio": best["on"] / best["off"]}
    return out


if __name__ == "__main__":
    import sys

    it, reps, th = (int(x) for x in (sys.argv[1:] + ["2048", "3", "1"])[:3])
    print(bench_loop(it, reps, threads=th))

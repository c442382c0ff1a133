"""Fitted workloads from a dense recording, open and closed loop (docs/fidelity.md, "From a
dense recording").

    python docs/fidelity_loop.py --work runs/fid-loop          # ~25 min on one core
    python docs/fidelity_loop.py --work runs/fid-loop --reuse  # keep finished real runs
    python docs/fidelity_loop.py --work runs/fid-loop --reuse --diagnose   # + the diagnostics

For each digits model (the four of docs/fidelity.md and two held out from the closed loop's
design: ``mlp-gelu`` at lr 0.05, ``cnn-avg``):

1. the real runs: N = 8000 iterations of real training under dense SGD, top-0.1% without wear
   levelling and SGS-ARS (SparseUpdate co-simulation), and the first K = 1000 iterations of
   each recorded (TraceRecorder; the same seed, so the same iterations);
2. ``timesim trace fit`` on the *dense* recording, then ``synth:fit?...&iterations=N`` with
   ``loop=off`` and ``loop=on`` on the same chip under each method;
3. the same from each method's own recording (what docs/fidelity.md's main table does).

The tables replace the part of docs/fidelity.md between its LOOP markers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

from fidelity import METHODS, _hw, replace_section  # noqa: E402  (as fidelity.py)

MODELS = {"mlp": ("MLP 64-256-256-10", 0.1), "lenet": ("LeNet-like CNN", 0.1),
          "mlp-tanh": ("MLP 64-128-64-10, tanh", 0.1),
          "cnn3": ("CNN, three 3×3 convolutions + FC", 0.1),
          "mlp-gelu": ("MLP 64-160-48-10, GELU, lr 0.05 (held out from the loop)", 0.05),
          "cnn-avg": ("CNN 5×5 + 3×3, avg-pool, ELU, 2 FC (held out from the loop)", 0.1),
          "mlp-leaky": ("MLP 64-96-96-10, LeakyReLU, lr 0.02 (held out from the loop)",
                        0.02)}


def real(model: str, work: Path, iterations: int, record: int, reuse: bool) -> None:
    """Step 1 for one model: the recordings and the real runs that are not there yet."""
    from timesim.examples.digits import train

    lr = MODELS[model][1]
    for method in METHODS:
        hw = _hw(method)
        trace = work / f"trace-{model}-{method}-{record}"
        if not (reuse and (trace / "manifest.yaml").is_file()):
            train(model, iterations=record, hw=hw, lr=lr, record=str(trace))
        run = work / f"real-{model}-{method}-{iterations}"
        if not (reuse and _finished(run, iterations)):
            train(model, iterations=iterations, hw=hw, lr=lr, out=str(run))
        print(f"real {model} {method}", flush=True)


def _finished(run: Path, iterations: int) -> bool:
    try:
        return json.loads((run / "report.json").read_text()).get("iterations") == iterations
    except (OSError, ValueError):
        return False


def fitted(model: str, work: Path, iterations: int, record: int) -> dict:
    """Steps 2 and 3: {(recording, method, loop): max writes}, the fits and their timings."""
    from timesim.simulate import simulate
    from timesim.trace.fit import fit_trace
    from timesim.trace.fitted import write_model

    out = {"max": {}, "docs": {}, "fit_s": {}, "by_layer": {}}
    for rec in METHODS:
        y = work / f"fit-{model}-{rec}.yaml"
        t = time.perf_counter()
        doc, arrays = fit_trace(work / f"trace-{model}-{rec}-{record}")
        out["fit_s"][rec] = time.perf_counter() - t
        write_model(y, doc, arrays)
        out["docs"][rec] = doc
        for method in METHODS:
            if rec != "dense" and rec != method:
                continue
            for loop in ("off", "on"):
                r = simulate(_hw(method), f"synth:fit?model={y}&iterations={iterations}"
                             f"&loop={loop}")
                out["max"][(rec, method, loop)] = r["writes"]["max"]
                out["by_layer"][(rec, method, loop)] = {
                    n: v["max"] for n, v in r["writes"]["by_layer"].items()}
    return out


def tables(work: Path, iterations: int, record: int, results: dict) -> str:
    head = ["| model | method | max writes real | dense recording, open loop | dense recording, "
            "closed loop | own recording, open loop | own recording, closed loop |",
            "|---|---|---|---|---|---|---|"]
    order, per_layer = [], []
    for model, res in results.items():
        real = {m: json.loads((work / f"real-{model}-{m}-{iterations}" / "report.json")
                              .read_text())["writes"] for m in METHODS}
        for m in METHODS:
            rm = real[m]["max"]
            cells = []
            for rec in ("dense", m):
                for loop in ("off", "on"):
                    v = res["max"][(rec, m, loop)]
                    cells.append(f"{v} (**{v / rm:.2f}**)")
            if m == "dense":
                cells[2:] = ["=", "="]
            head.append(f"| {MODELS[model][0]} | {METHODS[m][2]} | {rm} | " + " | ".join(cells)
                        + " |")
            if m != "dense":
                for name, v in real[m]["by_layer"].items():
                    f = [res["by_layer"][("dense", m, lp)][name] for lp in ("off", "on")]
                    per_layer.append(f"| {model} | {m} | {name} | {v['max']} | {f[0]} | {f[1]} |")
        for loop in ("off", "on"):
            r = sorted(METHODS, key=lambda m: -real[m]["max"])
            p = sorted(METHODS, key=lambda m: -res["max"][("dense", m, loop)])
            order.append(f"{model} loop={loop}: {'kept' if r == p else 'NOT kept'} "
                         f"(real {' > '.join(r)}, fitted {' > '.join(p)})")
    params = ["| model | layer | κ | ρ (fitted) | κ spread | ρ spread | response 1–32 | "
              "explained by h | acf fit error / sampling error | κ_cell (fitted) | ρ_cell "
              "(fitted) | cell r_1 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fit_s = []
    for model, res in results.items():
        for L in res["docs"]["dense"]["layers"]:
            lp = L["loop"]
            f = lp["fit"]
            c = lp["fit_cell"]
            params.append(f"| {model} | {L['layer']['name']} | {lp['kappa']:.3f} | "
                          f"{lp['rho']:.3f} ({f['rho_fit']:.3f}) | "
                          f"{_span(f['spread']['kappa'])} | "
                          f"{_span(f['spread']['rho'])} | {f['response_32']:.2f} | "
                          f"{f['explained']:.2f} | {f['acf_rmse']:.3f} / {f['acf_se']:.3f} | "
                          f"{lp['kappa_cell']:.3f} ({c.get('kappa_fit', 0):.3f}) | "
                          f"{lp['rho_cell']:.3f} ({c.get('rho_fit', 0):.3f}) | "
                          f"{c['r'][0] if c['r'] else 0:.3f} |")
        fit_s.append(f"{model} {res['fit_s']['dense']:.1f} s")
    return "\n".join([
        f"Fitted from the first {record} iterations, predicted at {iterations} "
        f"({iterations // record}×); max writes of the whole network and, in bold, fitted / "
        "real.", "", *head, "", "Ordering of the three methods by max writes (dense "
        "recording): " + "; ".join(order) + ".", "",
        "Per layer, from the dense recording (max writes real / open loop / closed loop):", "",
        "| model | method | layer | real | open loop | closed loop |",
        "|---|---|---|---|---|---|", *per_layer, "",
        "The closed loop's parameters fitted from the dense recordings (`loop` in the YAML):",
        "", *params, "", "Fit time of each dense recording (whole `fit_trace`, both the open "
        "and the closed loop's passes): " + ", ".join(fit_s) + "."])


def _span(v) -> str:
    return f"{v[0]:.2f}–{v[1]:.2f}" if v else "–"


def diagnose(work: Path, model: str, record: int) -> None:
    """What differs between a dense and a top-k recording of the same training (the numbers
    of docs/fidelity.md, "From a dense recording"): each recording replayed through top-k,
    and how concentrated each layer's power is in its loudest rows, columns and cells."""
    import numpy as np

    from timesim.simulate import simulate
    from timesim.trace import open_trace

    for rec in METHODS:
        r = simulate(_hw("topk"), str(work / f"trace-{model}-{rec}-{record}"))
        by = {n: v["max"] for n, v in r["writes"]["by_layer"].items()}
        print(f"{model}: the {rec} recording replayed through top-k: max writes "
              f"{r['writes']['max']} {by}")
    for rec in ("dense", "topk", "sgs"):
        tr = open_trace(work / f"trace-{model}-{rec}-{record}")
        parts = {layer.name: [] for layer in tr.meta.layers}
        for ch in tr.chunks():
            for name in parts:
                parts[name].append(np.asarray(ch.arrays[name], dtype=np.float64))
        for name, p in parts.items():
            G = np.concatenate(p)[record // 2:]
            G = G / np.sqrt((G ** 2).mean(axis=(1, 2)))[:, None, None]
            ms = (G ** 2).mean(0)
            row, col = ms.mean(1), ms.mean(0)
            print(f"{model} {rec:5s} {name}: iterations {record // 2}-{record - 1}, power "
                  f"max/mean: rows {row.max() / row.mean():.1f}, columns "
                  f"{col.max() / col.mean():.1f}, cells {ms.max() / ms.mean():.1f}; loudest 1% "
                  f"of cells' share {_top(ms.ravel(), 0.01):.3f}")


def _top(x, frac: float) -> float:
    import numpy as np

    s = np.sort(x)[::-1]
    return float(s[:max(1, int(len(s) * frac))].sum() / s.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/fidelity-loop")
    ap.add_argument("--iterations", type=int, default=8000)
    ap.add_argument("--record", type=int, default=1000)
    ap.add_argument("--model", choices=tuple(MODELS), action="append")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs and recordings")
    ap.add_argument("--diagnose", action="store_true", help="also print the diagnostics")
    ap.add_argument("--no-docs", action="store_true", help="print the tables only")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    models = a.model or list(MODELS)
    t0 = time.perf_counter()
    results = {}
    for model in models:
        real(model, work, a.iterations, a.record, a.reuse)
        results[model] = fitted(model, work, a.iterations, a.record)
        print(f"fitted {model}", flush=True)
    if a.diagnose:
        for model in models:
            diagnose(work, model, a.record)
    text = tables(work, a.iterations, a.record, results)
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if not a.no_docs:
        print(f"updated {replace_section('LOOP', text)}")


if __name__ == "__main__":
    main()

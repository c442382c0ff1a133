"""Fitted synthetic workloads against held-out real training (docs/fidelity.md).

    python docs/fidelity.py                    # everything: ~55 min on 2 cores (real runs)
    python docs/fidelity.py --work runs/fid --reuse   # keep finished real runs of that folder
    python docs/fidelity.py --model cnn3       # one model (the held-out CNN: ~16 min)

For each digits model (the MLP and LeNet of the design; mlp-tanh and cnn3, held out from it)
and each of the paper's three methods (dense SGD, top-0.1% without wear levelling, SGS-ARS):

1. the real run: 64,000 iterations of real training with the method in the loop
   (SparseUpdate co-simulation, the same as traces/digits_results.py);
2. the first K = 2000 iterations of the same training (same seed, so the same iterations)
   recorded with TraceRecorder;
3. ``timesim trace fit`` on that recording, then ``synth:fit?model=...&iterations=64000``
   simulated on the same chip with the same method;
4. max writes, lifetime extension, mean sparsity, ARS swaps, and per layer the max and the
   Wasserstein distance between the per-cell write counts (over the real run's mean).

The tables replace the part of docs/fidelity.md between its RESULTS markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = {"dense": ("dense", "none", "dense SGD"),
           "topk": ("topk", "none", "top-0.1%, no wear levelling"),
           "sgs": ("sgs", "ars", "SGS-ARS (1024, 32)")}
NAMES = {"mlp": "MLP 64-256-256-10", "lenet": "LeNet-like CNN",
         "mlp-tanh": "MLP 64-128-64-10, tanh (held out)",
         "cnn3": "CNN, three 3×3 convolutions + FC (held out)"}
PROFILE_MODELS = ("mlp", "lenet")     # the bundled profile: the two models of the design


def _hw(method: str):
    import timesim

    sel, wl, _ = METHODS[method]
    return timesim.load_hwconfig(None, [f"controller.selection={sel}",
                                        f"controller.wear_leveling={wl}"])


def _finished(run: Path, hw, iterations: int, label: str) -> bool:
    """A real run folder that can be kept: finished, same chip, length and workload."""
    from timesim.report import hwconfig_hash

    try:
        r = json.loads((run / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return (r.get("iterations") == iterations and r.get("hwconfig_hash") == hwconfig_hash(hw)
            and r.get("trace", {}).get("path") == label)


def _recorded(trace: Path, iterations: int) -> bool:
    import yaml

    try:
        m = yaml.safe_load((trace / "manifest.yaml").read_text())
    except (OSError, ValueError):
        return False
    return m.get("iterations") == iterations and m.get("complete", True)


def real(model: str, method: str, work: Path, iterations: int, record: int,
         reuse: bool) -> dict:
    """Steps 1 and 2 for one (model, method); returns timings."""
    from timesim.examples.digits import train

    hw = _hw(method)
    run = work / f"real-{model}-{method}"
    trace = work / f"trace-{model}-{method}-{record}"
    out = {"model": model, "method": method}
    t = time.perf_counter()
    if not (reuse and _recorded(trace, record)):
        train(model, iterations=record, hw=hw, record=str(trace))
    out["record_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if not (reuse and _finished(run, hw, iterations, f"live:digits-{model}")):
        train(model, iterations=iterations, hw=hw, out=str(run))
    out["real_s"] = time.perf_counter() - t
    return out


def fitted(model: str, method: str, work: Path, iterations: int, record: int) -> dict:
    """Step 3 for one (model, method)."""
    from timesim.simulate import simulate
    from timesim.trace.fit import fit_trace
    from timesim.trace.fitted import write_model

    hw = _hw(method)
    trace = work / f"trace-{model}-{method}-{record}"
    yaml_path = work / f"fit-{model}-{method}.yaml"
    t = time.perf_counter()
    doc, arrays = fit_trace(trace)
    write_model(yaml_path, doc, arrays)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    simulate(hw, f"synth:fit?model={yaml_path}&iterations={iterations}",
             out=work / f"synth-{model}-{method}")
    return {"model": model, "method": method, "fit_s": fit_s,
            "synth_s": time.perf_counter() - t, "doc": doc}


def _summary(run: Path) -> dict:
    from timesim.compare import load_report, load_writes

    r = load_report(run)
    cells = {l["name"]: l["rows"] * l["cols"] for l in r["trace"]["layers"]}
    by = r["writes"]["by_layer"]
    return {"max": r["writes"]["max"], "extension": r["lifetime"]["extension"],
            "sparsity": sum(by[n]["sparsity"] * cells[n] for n in by) / sum(cells.values()),
            "swaps": r["ars"]["swaps"], "by_layer": {n: by[n]["max"] for n in by},
            "writes": load_writes(run)}


def tables(work: Path, models, fits: dict) -> str:
    from timesim.compare import wasserstein

    lines = ["| model | method | max writes real | fitted | fitted / real | extension real / "
             "fitted | mean sparsity real / fitted | ARS swaps real / fitted |",
             "|---|---|---|---|---|---|---|---|"]
    layer_lines = ["| model | method | layer | max real | max fitted | fitted / real | "
                   "W1 / mean |", "|---|---|---|---|---|---|---|"]
    order_ok = []
    for model in models:
        maxes = {}
        for method in METHODS:
            a = _summary(work / f"real-{model}-{method}")
            b = _summary(work / f"synth-{model}-{method}")
            maxes[method] = (a["max"], b["max"])
            lines.append(f"| {NAMES[model]} | {METHODS[method][2]} | {a['max']} | {b['max']} "
                         f"| **{b['max'] / a['max']:.2f}** | {a['extension']:.1f}× / "
                         f"{b['extension']:.1f}× | {a['sparsity']:.4f} / {b['sparsity']:.4f} "
                         f"| {a['swaps']} / {b['swaps']} |")
            if method == "dense":
                continue
            for name, w in a["writes"].items():
                v = b["writes"][name]
                w1 = wasserstein(v, w) / max(w.mean(), 1e-12)
                layer_lines.append(f"| {model} | {method} | {name} | {w.max()} | {v.max()} | "
                                   f"{v.max() / max(w.max(), 1):.2f} | {w1:.3f} |")
        real_order = sorted(METHODS, key=lambda m: -maxes[m][0])
        fit_order = sorted(METHODS, key=lambda m: -maxes[m][1])
        kept = "kept" if real_order == fit_order else "NOT kept"
        order_ok.append(f"{NAMES[model]}: real {' > '.join(real_order)}, fitted "
                        f"{' > '.join(fit_order)} ({kept})")
    params = ["| model | method | layer | bias | b quietest / loudest eighth | τ direction | "
              "row / col drift | τ importance | γ | gate exponent α | importance R² | "
              "kurtosis real / model | variance ratio real / model |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, method), doc in sorted(fits.items()):
        for L in doc["layers"]:
            params.append(f"| {model} | {method} | {L['layer']['name']} | {L['bias']:.3f} | "
                          f"{_ends(L['bias_by_rms'])} | {L['tau_direction']:.4g} | "
                          f"{L['row_drift']:.2f} / {L['col_drift']:.2f} | "
                          f"{L['tau_importance']:.4g} | {L['scale']['gamma']:.2f} | "
                          f"{L['fit']['gate_exponent']:.2f} | "
                          f"{L['fit']['importance_r2']:.3f} | {L['fit']['kurtosis_raw']:.2f} / "
                          f"{L['fit']['kurtosis_raw_model']:.2f} | "
                          f"{L['fit']['variance_ratio']['real']:.2f} / "
                          f"{L['fit']['variance_ratio']['model']:.2f} |")
    return "\n".join(["### Whole network", "", *lines, "", "Ordering of the three methods by "
                      "max writes: " + "; ".join(order_ok) + ".", "",
                      "### Per layer (max writes and the distance between the write-count "
                      "distributions)", "", *layer_lines, "",
                      "### The fitted parameters (`timesim trace fit`, statistics from "
                      "iterations 1000–1999)", "", *params])


def _ends(table) -> str:
    return f"{table[0][1]:.3f} / {table[-1][1]:.3f}" if table else "–"


def write_profile(work: Path, models, record: int, path: Path) -> None:
    """The per-layer-kind profile (``synth:MODEL?profile=digits``): for each kind, the median
    of every fitted layer of that kind over both models and the three methods' recordings;
    gate tables averaged quantile by quantile."""
    import numpy as np
    import yaml

    params = ("bias", "bias_exponent", "tau_direction", "row_drift", "col_drift",
              "tau_importance", "row_sigma", "col_sigma")
    kinds: dict = {}
    for model in models:
        for method in METHODS:
            y = work / f"fit-{model}-{method}.yaml"
            doc = yaml.safe_load(y.read_text())
            with np.load(y.with_suffix(".npz")) as z:
                for L in doc["layers"]:
                    info = L["layer"]
                    k = kinds.setdefault(info["kind"], {p: [] for p in params} | {
                        "dead_rows": [], "dead_cols": [], "row_gate": [], "col_gate": [],
                        "loud_gate": [], "bias_by_rms": [], "layers": []})
                    for p in params:
                        k[p].append(L[p])
                    k["dead_rows"].append(L["dead_rows"] / info["rows"])
                    k["dead_cols"].append(L["dead_cols"] / info["cols"])
                    k["row_gate"].append(z[f"{info['name']}/row_gate"])
                    k["col_gate"].append(z[f"{info['name']}/col_gate"])
                    k["loud_gate"].append(z[f"{info['name']}/loud_gate"])
                    if L["bias_by_rms"]:
                        k["bias_by_rms"].append(L["bias_by_rms"])
                    k["layers"].append(f"{model}/{method}/{info['name']}")
    out = {}
    for kind, k in kinds.items():
        out[kind] = {p: float(f"{np.median(k[p]):.4g}") for p in (*params, "dead_rows",
                                                                  "dead_cols")}
        for g in ("row_gate", "col_gate", "loud_gate"):
            out[kind][g] = [float(f"{v:.5g}") for v in np.median(np.array(k[g]), axis=0)]
        # the direction by RMS: bin by bin, the median relative RMS and the median strength
        if k["bias_by_rms"]:
            tb = np.median(np.array(k["bias_by_rms"]), axis=0)
            out[kind]["bias_by_rms"] = [[float(f"{x:.4g}"), float(f"{b:.4g}")] for x, b in tb]
        out[kind]["from"] = k["layers"]
    head = ("# Per-layer-kind parameters of synthetic workloads (synth:MODEL?profile=digits):\n"
            "# medians of `timesim trace fit` over every layer of that kind in the first\n"
            f"# {record} iterations of the digits MLP and LeNet under dense SGD, top-k\n"
            "# and SGS-ARS (docs/fidelity.py --write-profile; docs/fidelity.md).\n")
    path.write_text(head + yaml.safe_dump({"kinds": out}, sort_keys=False, width=100))


def replace_section(marker: str, text: str) -> Path:
    """docs/fidelity.md with ``text`` between its ``<!-- MARKER -->`` and
    ``<!-- /MARKER -->`` lines (this script's RESULTS, docs/fidelity_loop.py's LOOP)."""
    doc = ROOT / "docs" / "fidelity.md"
    body = doc.read_text()
    doc.write_text(re.sub(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)",
                          lambda m: m.group(1) + text + "\n" + m.group(2), body, flags=re.S))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/fidelity", help="folder for every run and trace")
    ap.add_argument("--iterations", type=int, default=64000)
    ap.add_argument("--record", type=int, default=2000, help="K: iterations recorded and fitted")
    ap.add_argument("--model", choices=tuple(NAMES), action="append")
    ap.add_argument("--reuse", action="store_true",
                    help="keep real runs and recordings of --work that match (same chip, "
                         "length, workload)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-docs", action="store_true", help="print the tables only")
    ap.add_argument("--write-profile", action="store_true",
                    help="also rewrite timesim/data/profiles/digits.yaml from these fits")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    models = a.model or list(NAMES)
    jobs = [(m, me) for m in models for me in METHODS]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as pool:
        for r in pool.map(real, *zip(*jobs), *([x] * len(jobs) for x in
                                               (work, a.iterations, a.record, a.reuse))):
            print(f"real {r['model']} {r['method']}: recorded in {r['record_s']:.0f} s, "
                  f"real run {r['real_s']:.0f} s", flush=True)
        fits = {}
        for r in pool.map(fitted, *zip(*jobs), *([x] * len(jobs) for x in
                                                 (work, a.iterations, a.record))):
            fits[(r["model"], r["method"])] = r["doc"]
            print(f"fitted {r['model']} {r['method']}: fit {r['fit_s']:.1f} s, synthetic "
                  f"run {r['synth_s']:.0f} s", flush=True)
    if a.write_profile:
        missing = [m for m in PROFILE_MODELS if m not in models]
        if missing:
            sys.exit(f"--write-profile needs the fits of {', '.join(PROFILE_MODELS)} "
                     f"(missing: {', '.join(missing)})")
        write_profile(work, PROFILE_MODELS, a.record, ROOT / "timesim" / "data" / "profiles" /
                      "digits.yaml")
    text = tables(work, models, fits)
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if not a.no_docs:
        print(f"updated {replace_section('RESULTS', text)}")


if __name__ == "__main__":
    main()

"""Fitted workloads from a dense recording, open and closed loop (docs/fidelity.md, "From a
dense recording").

    python docs/fidelity_loop.py --work runs/fid-loop          # ~25 min on one core
    python docs/fidelity_loop.py --work runs/fid-loop --reuse  # keep finished real runs
    python docs/fidelity_loop.py --work runs/fid-loop --reuse --diagnose   # + the diagnostics
    python docs/fidelity_loop.py --work runs/fid-loop --reuse --decompose-only --decompose mlp
                                   # the gap split in two (~3 min a model; 2 GB of trace)
    python docs/fidelity_loop.py --work runs/fid-loop --reuse --seeds 3   # + seeds 1 and 2
    python docs/fidelity_loop.py --work runs/fid-loop --reuse --decompose-only \
        --mechanisms mlp       # two candidate mechanisms tested (after --decompose mlp)

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


def decompose(work: Path, model: str, iterations: int, record: int) -> tuple[str, str]:
    """The gap between a dense-recording fit and the real sparse run, split in two: the dense
    training's own gradients over the whole run (recorded in float16), replayed through each
    policy, are what a perfect open-loop model of the dense stream would give; fitted → dense
    replay is what the fit misses of the dense stream, dense replay → real what the policy's
    feedback on training adds. Then, on the layer where top-k's maximum is, a ladder of
    streams from the fitted one to the dense training's own, each through top-k (`_ladder`)."""
    from timesim.examples.digits import train
    from timesim.simulate import simulate
    from timesim.trace.fit import fit_trace
    from timesim.trace.fitted import write_model

    real(model, work, iterations, record, True)      # the runs and recordings not there yet
    full = work / f"trace-{model}-dense-{iterations}-f16"
    if not (full / "manifest.yaml").is_file():
        train(model, iterations=iterations, lr=MODELS[model][1], record=str(full),
              record_dtype="float16")
    sparse = work / f"trace-{model}-topk-{iterations}-f16"      # the real top-k training's
    if not (sparse / "manifest.yaml").is_file():
        train(model, iterations=iterations, hw=_hw("topk"), lr=MODELS[model][1],
              record=str(sparse), record_dtype="float16")
    y = work / f"fit-{model}-dense.yaml"
    if not y.is_file():
        write_model(y, *fit_trace(work / f"trace-{model}-dense-{record}"))
    rows = []
    worst = None
    for m in ("topk", "sgs"):
        ref = json.loads((work / f"real-{model}-{m}-{iterations}" / "report.json")
                         .read_text())["writes"]
        rep = simulate(_hw(m), str(full))["writes"]
        fit = simulate(_hw(m), f"synth:fit?model={y}&iterations={iterations}")["writes"]
        rows.append(f"| {model} | {METHODS[m][2]} | {ref['max']} | {rep['max']} "
                    f"(**{rep['max'] / ref['max']:.2f}**) | {fit['max']} "
                    f"(**{fit['max'] / ref['max']:.2f}**) | {fit['max'] / rep['max']:.2f} |")
        if m == "topk":
            worst = max(ref["by_layer"], key=lambda n: ref["by_layer"][n]["max"])
    stats = [f"| {model} | {worst} | {name} | {st['theta']:.1f} | {st['writes']} | "
             + " | ".join(f"{v[0]:.2f} / {v[1]:.2f}" for v in st["vr"]) + " |"
             for name, st in _ladder(work, model, worst, y, full, sparse, iterations // 2,
                                     record)]
    return "\n".join(rows), "\n".join(stats)


def mechanisms(work: Path, model: str, iterations: int, record: int) -> tuple[str, str]:
    """Two candidate mechanisms for the concentration of sparse training's gradients (docs/
    fidelity.md, "Two mechanisms a dense recording would have to carry"), measured on the
    first ``record`` iterations of the float16 recordings ``decompose`` makes:

    1. *an earlier stage*: is top-k training at iterations record/2 .. record − 1 what dense
       training was earlier (a clock that the chip's writes drive would then do)? Windows of
       the dense training against it: the loudest 1% of cells' share of the power, the
       loudest column and row over the mean, and top-0.1% on each window's iterations drawn
       at random (as ``_ladder``, each over its training's σ trend: one scale) for n/2
       iterations;
    2. *a unit's power following its weights' movement*: per layer, the elasticity γ of a
       column's (row's) power gain, iterations record − 100 .. record − 1 over 0..49, on
       log(1 + its weights' net movement / the mean) over iterations 0 .. record − 101
       (dense SGD: the gradient summed; top-k: what top-0.1% with its residual wrote), under
       each training; then the gain of the 10% most moved units of top-k training, observed
       and predicted by the dense γ (a loop whose unit gains the chip's writes drive would
       need the dense γ to carry over). Neighbour layers too where a column of one is a row
       of the next (an MLP's hidden unit: its error there, its activation here)."""
    import numpy as np

    from timesim.policies import topk_count
    from timesim.trace import open_trace

    worst = max((r := json.loads((work / f"real-{model}-topk-{iterations}" / "report.json")
                                 .read_text())["writes"]["by_layer"]),
                key=lambda n: r[n]["max"])
    grads, moved, trends = {}, {}, {}
    for what in ("dense", "topk"):
        parts: dict[str, list] = {}
        t = 0
        for ch in open_trace(work / f"trace-{model}-{what}-{iterations}-f16").chunks():
            for name, x in ch.arrays.items():
                parts.setdefault(name, []).append(np.asarray(x, dtype=np.float32))
            t += len(next(iter(ch.arrays.values())))
            if t >= record:
                break
        for name, p in parts.items():
            x = np.concatenate(p)[:record]
            grads[what, name] = x
            if what == "dense":
                moved[what, name] = x[:record - 100].sum(0, dtype=np.float64)
            else:
                A = np.zeros(x[0].size, np.float32)
                k = topk_count(1e-3, A.size)
                D = np.zeros(A.size)
                for i in range(record - 100):
                    A += x[i].ravel()
                    idx = np.argpartition(-np.abs(A), k - 1)[:k]
                    D[idx] += A[idx]
                    A[idx] = 0
                moved[what, name] = D.reshape(x.shape[1:])
        s2 = (grads[what, worst].astype(np.float64) ** 2).mean(axis=(1, 2))
        k = 101
        trends[what] = np.sqrt(np.convolve(np.pad(s2, k // 2, mode="edge"), np.ones(k) / k,
                                           "valid"))

    def power(x):
        u = x.astype(np.float64) ** 2
        return (u / u.mean(axis=(1, 2), keepdims=True)).mean(0)

    def conc(ms):
        col, row = ms.mean(0), ms.mean(1)
        return (f"{_top(ms.ravel(), 0.01):.3f} | {col.max() / col.mean():.1f} | "
                f"{row.max() / row.mean():.1f}")

    n = iterations // 2
    rng = np.random.default_rng(0)
    half = record // 2
    windows = [("dense", a, b) for a, b in ((0, 50), (50, 200), (200, half), (half, record))]
    windows.append(("topk", half, record))
    stage = []
    for what, a, b in windows:
        x, tr = grads[what, worst], trends[what]
        pick = rng.integers(a, b, n)
        st = _topk_stats((x[j] * np.float32(1 / tr[j]) for j in pick), n)
        label = "dense" if what == "dense" else "top-k"
        stage.append(f"| {model} | {worst} | {label} training, iterations {a}–{b - 1} | "
                     f"{conc(power(x[a:b]))} | {st['writes']} |")

    def gamma(what, target, axis, source, saxis):
        p0 = power(grads[what, target][:50]).mean(axis=axis)
        p1 = power(grads[what, target][record - 100:]).mean(axis=axis)
        d = np.sqrt((moved[what, source] ** 2).sum(axis=saxis))
        ok = (p0 > 1e-3) & (p1 > 1e-3)
        y, z = np.log(p1[ok] / p0[ok]), np.log1p(d[ok] / d[ok].mean())
        yc, zc = y - y.mean(), z - z.mean()
        return float((yc * zc).sum() / (zc * zc).sum()), y, z

    names = [n for (w, n) in grads if w == "dense"]
    pairs = []
    for i, name in enumerate(names):
        pairs += [(name, 0, name, 0, "columns ← own columns"),
                  (name, 1, name, 1, "rows ← own rows")]
        nxt = names[i + 1] if i + 1 < len(names) else None
        if nxt and grads["dense", name].shape[2] == grads["dense", nxt].shape[1]:
            pairs += [(name, 0, nxt, 1, f"columns ← {nxt}'s rows"),
                      (nxt, 1, name, 0, f"rows ← {name}'s columns")]
    elastic = []
    for target, axis, source, saxis, what in pairs:
        gd, _, _ = gamma("dense", target, axis, source, saxis)
        gt, y, z = gamma("topk", target, axis, source, saxis)
        top = np.argsort(-z)[:max(1, len(z) // 10)]
        obs = np.exp(y) / np.exp(y).mean()
        pred = np.exp(gd * z) / np.exp(gd * z).mean()
        elastic.append(f"| {model} | {target} {what} | {gd:.2f} | {gt:.2f} | "
                       f"{obs[top].mean():.2f} | {pred[top].mean():.2f} |")
    return "\n".join(stage), "\n".join(elastic)


_CLASSES = ((1e-3, 0.1), (0.1, 1.0), (1.0, 10.0), (10.0, 1e9))
_BLOCK = 50


def _ladder(work: Path, model: str, layer: str, fit: Path, full: Path, sparse: Path, n: int,
            record: int):
    """Top-0.1% on one layer over n iterations of nine streams, from the fitted model to the
    dense training's own gradients, then the real top-k training's (``sparse``), each step
    keeping one more property of the real stream:

    1. the fitted model (dense recording, open loop);
    2. the recording itself, resampled: each iteration a recorded one (its second half) drawn
       at random, rescaled from the recording's σ trend to the fitted σ(t) (what any model
       that draws iterations independently could do with the recording's statistics);
    3. the dense training's iterations n/2 .. n−1 drawn the same way (the later stage of
       training, which the recording has not seen), on the run's own σ trend;
    4. the same drawn in blocks of 50 consecutive iterations (the order within 50 kept);
    5. the dense training's first n iterations as they happened;
    6–9. the same four for the top-k training's gradients (its iterations record/2 .. record
       − 1 standing for the recording): what the run that is predicted sees."""
    import numpy as np

    from timesim.trace import open_trace
    from timesim.trace.fitted import FittedTrace

    def load(src, a, b):
        out, t = [], 0
        for ch in open_trace(src).chunks():
            x = ch.arrays[layer]
            lo, hi = max(a - t, 0), min(b - t, len(x))
            if lo < hi:
                out.append(np.asarray(x[lo:hi], dtype=np.float32))
            t += len(x)
            if t >= b:
                break
        return np.concatenate(out)

    def trend(x):
        s2 = (x.astype(np.float64) ** 2).mean(axis=(1, 2))
        k = 101
        return np.sqrt(np.convolve(np.pad(s2, k // 2, mode="edge"), np.ones(k) / k, "valid"))

    ft = FittedTrace(model=str(fit), iterations=n)
    li = ft.index[layer]
    sig = ft.fitted[li].sigma(np.arange(n))
    rng = np.random.default_rng(0)
    rec = load(work / f"trace-{model}-dense-{record}", record // 2, record)
    rtr = trend(rec)
    pick = rng.integers(0, len(rec), n)
    late = rng.integers(n // 2, n, n)
    starts = rng.integers(n // 2, n - _BLOCK + 1, n // _BLOCK + 1)
    blocks = (starts[:, None] + np.arange(_BLOCK)).ravel()[:n]
    early = rng.integers(record // 2, record, n)
    yield "fitted", _topk_stats((g for t0 in range(0, n, 100)
                                 for g in ft.generate(li, t0, min(100, n - t0))), n)
    yield "recording resampled", _topk_stats(
        (rec[j] * np.float32(sig[t] / rtr[j]) for t, j in enumerate(pick)), n)
    del rec
    for what, path in (("dense", full), ("top-k", sparse)):
        x = load(path, 0, n)
        tr = trend(x)
        if what == "top-k":
            yield (f"top-k training's iterations {record // 2}–{record - 1} resampled",
                   _topk_stats((x[j] * np.float32(tr[t] / tr[j]) for t, j in enumerate(early)),
                               n))
        yield f"later {what} iterations resampled", _topk_stats(
            (x[j] * np.float32(tr[t] / tr[j]) for t, j in enumerate(late)), n)
        yield f"… in blocks of {_BLOCK}", _topk_stats(
            (x[j] * np.float32(tr[t] / tr[j]) for t, j in enumerate(blocks)), n)
        yield f"{what} training", _topk_stats(iter(x), n)
        del x


def _topk_stats(stream, n: int) -> dict:
    """Top-0.1% on a stream of one layer's gradients (n iterations), in numpy: the selection
    threshold over the current σ (median over the second half), the most writes of one cell
    in the second half, and per class of cells (power over the layer's mean, second half) the
    variance ratio of sums over 10 and 250 iterations (1: white; below: the cell's gradient
    reverts; above: it persists)."""
    import numpy as np

    from timesim.policies import topk_count

    A = acc = None
    half, lags = n // 2, (10, 250)
    theta = []
    for t, g in enumerate(stream):
        if A is None:
            A = np.zeros(g.size, np.float32)
            k = topk_count(1e-3, g.size)
            W, S2 = np.zeros(g.size), np.zeros(g.size)
            acc = {L: np.zeros(g.size) for L in lags}
            var = {L: np.zeros(g.size) for L in lags}
        g = g.ravel()
        A += g
        idx = np.argpartition(-np.abs(A), k - 1)[:k]
        if t >= half:
            sig = float(np.sqrt((g.astype(np.float64) ** 2).mean()))
            theta.append(float(np.abs(A[idx]).min()) / sig)
            W[idx] += 1
            u = g / sig
            S2 += u * u
            for L in lags:
                acc[L] += u
                if (t - half + 1) % L == 0:
                    var[L] += acc[L] ** 2
                    acc[L][:] = 0
        A[idx] = 0
    m = n - half
    ms = S2 / m
    pw = ms / ms.mean()
    vr = []
    for lo, hi in _CLASSES:
        c = (pw >= lo) & (pw < hi)
        vr.append(tuple(float(np.mean(var[L][c] / ((m // L) * L * ms[c]))) if c.any()
                        else float("nan") for L in lags))
    return {"theta": float(np.median(theta)), "writes": int(W.max()), "vr": vr}


def seed_spread(work: Path, model: str, iterations: int, record: int, seeds: int) -> list[str]:
    """The whole procedure again with other seeds (training seed s: its own data split,
    initialisation and batches; the dense recording, the fit and the generator's seed s):
    how far a single real run's max writes move from seed to seed, against the fit's."""
    import statistics

    from timesim.examples.digits import train
    from timesim.simulate import simulate
    from timesim.trace.fit import fit_trace
    from timesim.trace.fitted import write_model

    lr = MODELS[model][1]
    ref = {m: [] for m in ("topk", "sgs")}
    fit = {(m, lp): [] for m in ("topk", "sgs") for lp in ("off", "on")}
    for s in range(seeds):
        sfx = f"-s{s}" if s else ""
        trace = work / f"trace-{model}-dense-{record}{sfx}"
        if not (trace / "manifest.yaml").is_file():
            train(model, iterations=record, hw=_hw("dense"), lr=lr, seed=s, record=str(trace))
        y = work / f"fit-{model}-dense{sfx}.yaml"
        if not y.is_file():
            write_model(y, *fit_trace(trace))
        for m in ("topk", "sgs"):
            run = work / f"real-{model}-{m}-{iterations}{sfx}"
            if not _finished(run, iterations):
                train(model, iterations=iterations, hw=_hw(m), lr=lr, seed=s, out=str(run))
            ref[m].append(json.loads((run / "report.json").read_text())["writes"]["max"])
            for lp in ("off", "on"):
                r = simulate(_hw(m), f"synth:fit?model={y}&iterations={iterations}&loop={lp}"
                             f"&seed={s}")
                fit[(m, lp)].append(r["writes"]["max"])
        print(f"seed {s} {model}", flush=True)
    rows = []
    for m in ("topk", "sgs"):
        med = statistics.median(ref[m])
        cells = []
        for lp in ("off", "on"):
            f = fit[(m, lp)]
            ratios = [a / b for a, b in zip(f, ref[m])]
            cells.append(f"{', '.join(map(str, f))} | **{statistics.median(f) / med:.2f}** "
                         f"({min(ratios):.2f}–{max(ratios):.2f})")
        rows.append(f"| {MODELS[model][0]} | {METHODS[m][2]} | {', '.join(map(str, ref[m]))} | "
                    f"{min(ref[m]) / med:.2f}–{max(ref[m]) / med:.2f} | " + " | ".join(cells)
                    + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/fidelity-loop")
    ap.add_argument("--iterations", type=int, default=8000)
    ap.add_argument("--record", type=int, default=1000)
    ap.add_argument("--model", choices=tuple(MODELS), action="append")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs and recordings")
    ap.add_argument("--diagnose", action="store_true", help="also print the diagnostics")
    ap.add_argument("--no-docs", action="store_true", help="print the tables only")
    ap.add_argument("--decompose", choices=tuple(MODELS), action="append",
                    help="split that model's gap (docs/fidelity.md, 'Where the gap is')")
    ap.add_argument("--mechanisms", choices=tuple(MODELS), action="append",
                    help="test two mechanisms of sparse training's concentration on that model "
                         "(after --decompose has recorded it; docs/fidelity.md)")
    ap.add_argument("--seeds", type=int, default=0,
                    help="also the whole procedure with training seeds 0..N-1 (the SEEDS table)")
    ap.add_argument("--decompose-only", action="store_true",
                    help="only the --decompose tables (the LOOP tables left as they are)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    models = [] if a.decompose_only else a.model or list(MODELS)
    t0 = time.perf_counter()
    results = {}
    for model in models:
        real(model, work, a.iterations, a.record, a.reuse)
        results[model] = fitted(model, work, a.iterations, a.record)
        print(f"fitted {model}", flush=True)
    if a.diagnose:
        for model in models:
            diagnose(work, model, a.record)
    if a.decompose:
        parts = [decompose(work, m, a.iterations, a.record) for m in a.decompose]
        dtext = "\n".join([
            f"Max writes over {a.iterations} iterations; in bold, over the real run.", "",
            "| model | method | real | dense training's gradients replayed | fitted (dense "
            "recording, open loop) | fitted / replayed |", "|---|---|---|---|---|---|",
            *[p[0] for p in parts], "",
            f"Top-0.1% on the layer with the real run's maximum, over the first "
            f"{a.iterations // 2} iterations of nine streams (`_ladder` in the script: from the "
            "fitted one to the dense training's own gradients, then the real top-k "
            "training's, each keeping one more property of the real stream), counted over "
            f"iterations {a.iterations // 4}–{a.iterations // 2 - 1}: the threshold (the k-th "
            "largest |A|) over the layer's σ(t), one cell's most writes, and per class of "
            "cells (power over the layer's mean) the variance ratio of 10- / 250-iteration "
            "sums (1: white; below 1 the cell's gradient reverts, above it persists):", "",
            "| model | layer | stream | threshold / σ | most writes | power 0.001–0.1 | "
            "0.1–1 | 1–10 | ≥ 10 |", "|---|---|---|---|---|---|---|---|---|",
            *[p[1] for p in parts]])
        print(dtext)
        if not a.no_docs:
            print(f"updated {replace_section('DECOMPOSE', dtext)}")
    if a.mechanisms:
        parts = [mechanisms(work, m, a.iterations, a.record) for m in a.mechanisms]
        mtext = "\n".join([
            f"1. An earlier stage? On the layer with the real top-k maximum: windows of the "
            f"first {a.record} iterations of each training, the loudest 1% of cells' share of "
            "the power, the loudest column's and row's power over the mean, and one cell's "
            f"most writes under top-0.1% over iterations {a.iterations // 4}–"
            f"{a.iterations // 2 - 1} of {a.iterations // 2} iterations drawn at random from "
            "the window (each over its σ trend).", "",
            "| model | layer | iterations of | loudest 1% share | loudest column / mean | "
            "loudest row / mean | most writes, drawn at random |", "|---|---|---|---|---|---|---|",
            *[p[0] for p in parts], "",
            f"2. A unit's power following its weights' movement? Elasticity γ of a column's "
            f"(row's) power gain, iterations {a.record - 100}–{a.record - 1} over 0–49, on "
            f"log(1 + net movement of the named weights over iterations 0–{a.record - 101} / "
            "its mean) under dense SGD and under top-k training; then the gain of top-k "
            "training's 10% most moved units (over the mean unit), observed and predicted with "
            "the dense γ.", "",
            "| model | power of ← movement of | γ dense | γ top-k | top-k's most moved: gain "
            "observed | predicted from dense γ |", "|---|---|---|---|---|---|",
            *[p[1] for p in parts]])
        print(mtext)
        if not a.no_docs:
            print(f"updated {replace_section('MECHANISMS', mtext)}")
    if a.seeds:
        rows = [r for m in models for r in seed_spread(work, m, a.iterations, a.record, a.seeds)]
        stext = "\n".join([
            f"Seeds 0–{a.seeds - 1} (training, recording, fit and generator), fitted from the "
            f"first {a.record} dense iterations, predicted at {a.iterations}: max writes of "
            "each seed's real run and of each seed's fit; the real runs' spread over their "
            "median; in bold the fitted median over the real median, and the range of the "
            "seed-by-seed ratios.", "",
            "| model | method | real, by seed | real spread | dense recording, open loop, by "
            "seed | median ratio (seed by seed) | closed loop, by seed | median ratio (seed by "
            "seed) |", "|---|---|---|---|---|---|---|---|", *rows])
        print(stext)
        if not a.no_docs:
            print(f"updated {replace_section('SEEDS', stext)}")
    if a.decompose_only:
        print(f"total {time.perf_counter() - t0:.0f} s")
        return
    text = tables(work, a.iterations, a.record, results)
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if not a.no_docs:
        print(f"updated {replace_section('LOOP', text)}")


if __name__ == "__main__":
    main()

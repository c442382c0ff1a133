"""Why the fitted MLP's top-k max writes fall short (docs/fidelity.md, "Reading the results").

    python docs/fidelity_diagnostics.py --work runs/fidelity     # after docs/fidelity.py

Reads the recordings, fits and real runs that docs/fidelity.py left in --work (the digits
MLP under top-0.1%, layer fc2 unless --layer) and prints, as markdown:

1. the fitted model without its direction (b = 0): max writes of a 64,000-iteration run;
2. write feedback: the recording replayed through top-k (numpy: A += g, the k largest |A|
   written and zeroed), each written cell's gradient at lags 1..16 after the write regressed
   on the value written;
3. where the reversion lives: the variance ratio (variance of a sum over n iterations over n
   times the variance) of single cells, of column sums and of row sums;
4. surrogates of the recording replayed through top-k: white noise with each cell's own
   variance times the layer's scale, no mean; Fourier surrogates (each cell's own spectrum,
   random phases) of the raw and of the scale-normalised gradients;
5. the real and fitted max writes of the layer at iterations 2048 and 8192 (write rates).

Everything is seeded; the real runs are those of docs/fidelity.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))


def load_layer(trace: Path, layer: str) -> np.ndarray:
    """(iterations, rows, cols) float64 of one layer of a recording."""
    from timesim.kernels.convert import to_float32
    from timesim.trace import open_trace

    t = open_trace(str(trace))
    parts = [to_float32(np.ascontiguousarray(ch.arrays[layer]), t.meta.dtype)
             for ch in t.chunks()]
    return np.concatenate(parts).astype(np.float64)


def topk_replay(G: np.ndarray, k: int, events: bool = False):
    """Max writes of top-k with local accumulation over G (iterations, cells); with
    ``events`` also (iteration, cell, value written) of every write."""
    A = np.zeros(G.shape[1])
    count = np.zeros(G.shape[1], dtype=np.int64)
    ev = []
    for t in range(G.shape[0]):
        A += G[t]
        idx = np.argpartition(-np.abs(A), k)[:k]
        count[idx] += 1
        if events:
            ev.append((np.full(k, t), idx, A[idx].copy()))
        A[idx] = 0.0
    if not events:
        return int(count.max())
    t, j, v = (np.concatenate(x) for x in zip(*ev))
    return int(count.max()), t, j, v


def variance_ratio(X: np.ndarray, n: int) -> float:
    X = X.reshape(X.shape[0], -1)
    m = X.shape[0] // n
    S = X[:m * n].reshape(m, n, -1).sum(1)
    return float((S ** 2).mean() / (n * (X[:m * n] ** 2).mean()))


def history(run: Path, layer: str, at: int) -> int:
    """A layer's max writes at the first recorded iteration ≥ ``at`` of a run folder."""
    with open(run / "max_writes_history.csv") as f:
        for row in csv.DictReader(f):
            if int(row["iteration"]) >= at:
                return int(row[layer])
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/fidelity", help="docs/fidelity.py's folder")
    ap.add_argument("--layer", default="fc2")
    ap.add_argument("--iterations", type=int, default=64000)
    a = ap.parse_args()
    work = Path(a.work)
    from fidelity import _hw

    from timesim.simulate import simulate

    hw = _hw("topk")
    out = []
    # 1. no direction
    fit = work / "fit-mlp-topk.yaml"
    doc = yaml.safe_load(fit.read_text())
    for L in doc["layers"]:
        L["bias"] = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        y = Path(tmp) / "fit.yaml"
        y.write_text(yaml.safe_dump(doc))
        shutil.copy(fit.with_suffix(".npz"), Path(tmp) / fit.with_suffix(".npz").name)
        r = simulate(hw, f"synth:fit?model={y}&iterations={a.iterations}")
    real = json.loads((work / "real-mlp-topk" / "report.json").read_text())
    out.append(f"1. b = 0: max writes {r['writes']['max']} against the real "
               f"{real['writes']['max']} ({r['writes']['max'] / real['writes']['max']:.2f}×); "
               "per layer " + ", ".join(f"{n} {v['max']}" for n, v in
                                        r["writes"]["by_layer"].items()))
    # 2. write feedback
    G = load_layer(work / "trace-mlp-topk-2000", a.layer)
    T = G.shape[0]
    cells = G.shape[1] * G.shape[2]
    k = max(1, round(hw.controller.topk_density * cells))
    flat = G.reshape(T, -1)
    mx, t, j, v = topk_replay(flat, k, events=True)
    late = t >= T // 2
    t, j, v = t[late], j[late], v[late]
    kappa = []
    for lag in (1, 2, 3, 5, 8, 12, 16, 24, 32):
        ok = t + lag < T
        back = (flat[t[ok] + lag, j[ok]] * v[ok]).sum() / (v[ok] ** 2).sum()
        kappa.append(f"{lag}: {back:+.4f}")
    out.append(f"2. replayed through top-k: max writes {mx} at iteration {T}; a written cell's "
               f"gradient after a write of A, in units of A, by lag: " + ", ".join(kappa))
    # 3. where the reversion lives
    from timesim.trace.fit import _fit_scale, scale_curve

    s = np.sqrt((flat ** 2).mean(1))
    kt, ks, slope, _ = _fit_scale(s)
    U = G / scale_curve(np.arange(T, dtype=float), kt, np.log(ks), -slope)[:, None, None]
    late_u = U[T - 1024:]
    rows = []
    for n in (16, 64, 256):
        rows.append(f"n = {n}: cell {variance_ratio(late_u, n):.3f}, column sums "
                    f"{variance_ratio(late_u.sum(1), n):.3f}, row sums "
                    f"{variance_ratio(late_u.sum(2), n):.3f}")
    out.append("3. variance ratios of the last 1024 recorded iterations: " + "; ".join(rows))
    del U, late_u
    # 4. surrogates
    rng = np.random.default_rng(7)
    H = G / s[:, None, None]
    sd = H.std(0)
    white = s[:, None] * (sd.reshape(1, -1) * rng.standard_normal(flat.shape))
    Fr = np.fft.rfft(flat - flat.mean(0), axis=0)
    ph = np.exp(2j * np.pi * rng.random(Fr.shape))
    ph[0] = 1
    raw = flat.mean(0) + np.fft.irfft(Fr * ph, n=T, axis=0)
    Hf = H.reshape(T, -1)
    Fh = np.fft.rfft(Hf - Hf.mean(0), axis=0)
    norm = s[:, None] * (Hf.mean(0) + np.fft.irfft(Fh * ph, n=T, axis=0))
    out.append(f"4. surrogates replayed through top-k (max writes at iteration {T}; real {mx}): "
               f"white, each cell's variance × the layer's scale, no mean "
               f"{topk_replay(white, k)}; Fourier surrogate of the raw gradients "
               f"{topk_replay(raw, k)}; of the normalised ones × the scale "
               f"{topk_replay(norm, k)}")
    # 5. rates
    rr = [history(work / "real-mlp-topk", a.layer, x) for x in (2048, 8192)]
    ff = [history(work / "synth-mlp-topk", a.layer, x) for x in (2048, 8192)]
    out.append(f"5. {a.layer} max writes at iterations 2048 / 8192: real {rr[0]} / {rr[1]} "
               f"(rates {rr[0] / 2048:.3f} and {(rr[1] - rr[0]) / 6144:.3f} per iteration), "
               f"fitted {ff[0]} / {ff[1]} ({ff[0] / 2048:.3f} and "
               f"{(ff[1] - ff[0]) / 6144:.3f})")
    print("\n".join(out))


if __name__ == "__main__":
    main()

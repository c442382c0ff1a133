"""Why the fitted MLP's top-k max writes fall short (docs/fidelity.md, "Reading the results").

    python docs/fidelity_diagnostics.py --work runs/fidelity     # after docs/fidelity.py

Reads the recordings, fits and real runs that docs/fidelity.py left in --work (the digits
MLP under top-0.1%, layer fc2 unless --layer) and prints, as markdown:

1. what the fitted MLP's top-k is sensitive to: max writes of 64,000-iteration runs of the fitted
   model and of variants of it (no direction, no loudness, flat scale beyond the recording,
   no importance drift, a short direction correlation time);
2. write feedback: the recording replayed through top-k (numpy: A += g, the k largest |A|
   written and zeroed), each written cell's gradient at lags 1..16 after the write regressed
   on the value written;
3. where the reversion lives: the variance ratio (variance of a sum over n iterations over n
   times the variance) of single cells, of column sums and of row sums;
4. surrogates of the recording replayed through top-k: white noise with each cell's own
   variance times the layer's scale, no mean; Fourier surrogates (each cell's own spectrum,
   random phases) of the raw and of the scale-normalised gradients;
5. the real and fitted max writes of the layer at iterations 2048 and 8192 (write rates);
6. the variance ratio by power bin (cells in sixths by their RMS) at 8 to 1000 iterations, of
   the recording's second half and of the fitted model over the same iterations: where the
   direction is, and where the gradients revert;
7. per-cell kurtosis (normalised by each iteration's own scale, and by the smoothed scale the
   model multiplies by) and the log-sd of the per-iteration scale around σ(t), real and fitted;
8. a written cell's mean gradient before and after the write, real and fitted;
9. a cell's later gradients regressed on its gradient now (the response to a unit gradient),
   by power group, in the MLP's dense, top-k and SGS-ARS recordings;
10. with --long: an 8000-iteration top-k recording replayed through top-k as it is and as
   surrogates, and the fitted model with and without feedback on written values.

Everything is seeded; the real runs are those of docs/fidelity.py.
"""

from __future__ import annotations

import argparse
import csv
import json
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


def fitted_variant(hw, fit: Path, edit, iterations: int) -> dict:
    """Run a copy of the fitted model with ``edit(layer document, arrays)`` applied to every
    layer."""
    from timesim.simulate import simulate
    from timesim.trace.fitted import write_model

    doc = yaml.safe_load(fit.read_text())
    with np.load(fit.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    for L in doc["layers"]:
        edit(L, arrays)
    with tempfile.TemporaryDirectory() as tmp:
        y = Path(tmp) / "fit.yaml"
        write_model(y, doc, arrays)
        return simulate(hw, f"synth:fit?model={y}&iterations={iterations}")


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
    ap.add_argument("--long", action="store_true",
                    help="also record 8000 iterations of the MLP under top-k (~1 min, 2.6 GB in "
                         "--work) and replay surrogates of it (point 10; ~5 min, ~12 GB of memory)")
    a = ap.parse_args()
    work = Path(a.work)
    from fidelity import _hw


    hw = _hw("topk")
    out = []
    # 1. what the fitted MLP's top-k max writes are sensitive to: each variant of the fitted
    # model run for the whole length
    fit = work / "fit-mlp-topk.yaml"
    real = json.loads((work / "real-mlp-topk" / "report.json").read_text())
    variants = {
        "as fitted": lambda L, z: None,
        "no direction (b = 0)": lambda L, z: L.update(bias=0.0, bias_by_rms=[]),
        "no loudness λ": lambda L, z: z.pop(f"{L['layer']['name']}/loud_gate"),
        "flat scale beyond the recording (γ = 0)": lambda L, z: L["scale"].update(gamma=0.0),
        "no importance drift": lambda L, z: L.update(row_drift=0.0, col_drift=0.0),
        "direction correlation time 2000": lambda L, z: L.update(tau_direction=2000.0),
    }
    res = []
    for label, edit in variants.items():
        r = fitted_variant(hw, fit, edit, a.iterations)
        m = r["writes"]["max"]
        res.append(f"{label} {m} ({m / real['writes']['max']:.2f}×)")
    out.append(f"1. the fitted MLP under top-k, max writes at {a.iterations} iterations against "
               f"the real {real['writes']['max']}: " + "; ".join(res))
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
    from timesim.trace.fit import _fit_scale
    from timesim.trace.fitted import scale_curve

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
    # 6. variance ratio by power bin, real and fitted
    from timesim.trace.fitted import FittedTrace

    synth = FittedTrace(str(fit), iterations=T, chunk=100)
    li = synth.index[a.layer]
    model = np.concatenate([synth.generate(li, t0, min(100, T - t0)).astype(np.float64)
                            for t0 in range(0, T, 100)]).reshape(T, -1)
    horizons = (8, 32, 125, 250, 500, 1000)
    for label, X in (("real", flat), ("fitted", model)):
        sm = _smooth(X)
        U = (X / sm[:, None])[T // 2:]
        p = (U ** 2).mean(0)
        live = np.nonzero(p > 0)[0]
        bins = np.array_split(live[np.argsort(p[live])], 6)
        rows = []
        for n in horizons:
            m = U.shape[0] // n
            S = U[:m * n].reshape(m, n, -1).sum(1)
            rows.append(f"n = {n}: " + " ".join(f"{(S[:, b] ** 2).mean() / (n * p[b].mean()):.2f}"
                                                for b in bins))
        out.append(f"6. variance ratio by power sixth (quietest first), {label}, iterations "
                   f"{T // 2}–{T - 1}: " + "; ".join(rows))
    # 7. kurtosis and loudness
    for label, X in (("real", flat), ("fitted", model)):
        s_t = np.sqrt((X ** 2).mean(1))
        sm = _smooth(X)
        kurt = []
        for norm in (s_t, sm):
            V = (X / norm[:, None])[T // 2:]
            p2, p4 = (V ** 2).mean(0), (V ** 4).mean(0)
            ok = p2 > 0
            kurt.append((p4[ok] / p2[ok]).sum() / p2[ok].sum())
        late = slice(T // 2, T)
        lam = np.log(s_t / sm)[late]
        P = X[late] ** 2
        top = np.argsort(P.mean(0))[-max(1, P.shape[1] // 100):]
        share = P[:, top].sum(1) / np.maximum(P.sum(1), 1e-300)
        out.append(f"7. {label}: cell kurtosis {kurt[0]:.2f} (each iteration's own scale), "
                   f"{kurt[1]:.2f} (the smoothed scale); log-sd of the scale around σ(t) "
                   f"{lam.std():.2f}; correlation of the log scale with the loudest 1% of "
                   f"cells' share of the iteration's power {np.corrcoef(lam, share)[0, 1]:+.2f}")
    # 8. is a push used up by a write? A written cell's mean gradient over the 150 iterations
    # before the write and after it, in the written value's sign, per cell RMS; the fitted
    # model (whose push ignores writes) replayed the same way is the control
    W = 150
    for label, X in (("real", flat), ("fitted", model)):
        U = X / _smooth(X)[:, None]
        p = (U ** 2).mean(0)
        rank = np.argsort(np.argsort(p)) / p.size
        _, t, j, v = topk_replay(X, k, events=True)
        parts = []
        for lo, hi in ((0, .5), (.5, .8), (.8, .95), (.95, 1.01)):
            sel = (p[j] > 0) & (t >= W) & (t < T - W) & (rank[j] >= lo) & (rank[j] < hi)
            if sel.sum() < 10:
                continue
            sg = np.sign(v[sel]) / np.sqrt(p[j[sel]])
            before = np.array([U[x - W:x, c].mean() for x, c in zip(t[sel], j[sel])]) * sg
            after = np.array([U[x + 1:x + 1 + W, c].mean() for x, c in zip(t[sel], j[sel])]) * sg
            parts.append(f"power quantile {lo:.2f}–{min(hi, 1):.2f}: {sel.sum()} writes, "
                         f"before {before.mean():+.3f}, after {after.mean():+.3f}")
        out.append(f"8. {label}, a written cell's mean gradient before and after the write: "
                   + "; ".join(parts))
    # 9. the response to a unit gradient, by power group, under each method's recording
    for method in ("dense", "topk", "sgs"):
        X = load_layer(work / f"trace-mlp-{method}-{T}", a.layer).reshape(T, -1)
        out.append(f"9. {method}: " + response(X[T // 2:] / _smooth(X)[T // 2:, None]))
    if a.long:
        out.extend(long_run(work, a.layer, k))
    print("\n".join(out))


GROUPS = ((20, 0), (500, 20), (0.2, 0.05), (0.5, 0.2), (0.9, 0.5))   # from the loudest down


def response(U: np.ndarray) -> str:
    """A cell's later gradients regressed on its gradient now, summed over lags 1–4, 1–16,
    1–64 and 1–256, pooled over groups of cells by power (the 20 loudest, the next 480, then
    quantiles 0.8–0.95, 0.5–0.8, 0.1–0.5)."""
    p = (U ** 2).mean(0)
    order = np.argsort(p)
    n = p.size
    parts = []
    for hi, lo in GROUPS:
        a, b = ((n - hi, n - lo) if hi >= 1 else (int(n * (1 - hi)), int(n * (1 - lo))))
        X = U[:, order[a:b]]
        v = (X ** 2).sum()
        cum = np.cumsum([(X[:-lag] * X[lag:]).sum() / v for lag in range(1, 257)])
        name = (f"loudest {hi - lo}" if hi >= 1 else f"quantiles {1 - hi:.2f}–{1 - lo:.2f}")
        parts.append(f"{name}: {cum[3]:+.2f} {cum[15]:+.2f} {cum[63]:+.2f} {cum[255]:+.2f}")
    return "response to a unit gradient over lags 1–4, 1–16, 1–64, 1–256: " + "; ".join(parts)


def long_run(work: Path, layer: str, k: int) -> list[str]:
    """Point 10: an 8000-iteration recording of the MLP under top-k, replayed through top-k as
    it is and as surrogates; the fitted model with and without feedback on written values."""
    from fidelity import _hw

    from timesim.examples.digits import train
    from timesim.trace.fitted import FittedTrace

    trace = work / "trace-mlp-topk-8000"
    if not (trace / "manifest.yaml").is_file():
        train("mlp", iterations=8000, hw=_hw("topk"), record=str(trace))
    G = load_layer(trace, layer).reshape(8000, -1).astype(np.float32)
    T, n = G.shape
    s = np.sqrt((G.astype(np.float64) ** 2).mean(1)).astype(np.float32)
    sm = _smooth(G.astype(np.float64)).astype(np.float32)
    rng = np.random.default_rng(0)
    sd = np.sqrt(((G[1000:2000] / s[1000:2000, None]) ** 2).mean(0))
    res = [f"real {replay_counts(lambda i: G[i], T, n, k)}"]
    res.append("white, each cell's RMS of iterations 1000–1999 × the real scale "
               + replay_counts(lambda i: s[i] * sd * rng.standard_normal(n, np.float32), T, n, k))
    res.append("the same × the smoothed scale "
               + replay_counts(lambda i: sm[i] * sd * rng.standard_normal(n, np.float32), T, n, k))
    sign = lambda i: G[i] * np.where(rng.random(n) < 0.5, -1, 1).astype(np.float32)  # noqa: E731
    res.append("the recording with a random sign per cell and iteration "
               + replay_counts(sign, T, n, k))
    perm = np.concatenate([b + rng.permutation(min(500, T - b)) for b in range(0, T, 500)])
    res.append("the recording's iterations shuffled within blocks of 500 "
               + replay_counts(lambda i: G[perm[i]], T, n, k))
    G = None                                     # noqa: F841 (2 GB freed before the model)
    synth = FittedTrace(str(work / "fit-mlp-topk.yaml"), iterations=T, chunk=100)
    li = synth.index[layer]
    M = np.concatenate([synth.generate(li, t0, 100).copy() for t0 in range(0, T, 100)])
    M = M.reshape(T, -1)
    res.append(f"the fitted model {replay_counts(lambda i: M[i], T, n, k)}")
    # the loudness: the fitted model without its λ, and with the recorded λ sequence instead
    lam = (s / sm).astype(np.float32)
    lam /= np.sqrt((lam ** 2).mean())
    loud, synth.fitted[li].loud = synth.fitted[li].loud, None
    M = np.concatenate([synth.generate(li, t0, 100).copy() for t0 in range(0, T, 100)])
    M = M.reshape(T, -1)
    res.append(f"without its λ {replay_counts(lambda i: M[i], T, n, k)}")
    res.append("with the recorded λ sequence instead "
               + replay_counts(lambda i: lam[i] * M[i], T, n, k))
    tails = " ".join(f"{(x ** 4).mean() / (x ** 2).mean() ** 2:.1f}"
                     for x in (lam[w:w + 1000] for w in range(0, T, 1000)))
    res.append(f"(the recorded λ's E[λ⁴]/E[λ²]² per 1000 iterations: {tails})")
    synth.fitted[li].loud = loud
    M = np.concatenate([synth.generate(li, t0, 100).copy() for t0 in range(0, T, 100)])
    M = M.reshape(T, -1)
    res.append("the fitted model with feedback on written values (0.45 of a write comes back, "
               "decaying by half an iteration) "
               + replay_counts(lambda i: M[i], T, n, k, feedback=(0.45, 0.5)))
    # the measured response is the loud cells' (point 9: −0.5 for the loudest ~500 of fc2's
    # 65,536 cells, the quiet half none): the same feedback on the loudest 1% or 5% only
    rms = np.sqrt((M[1000:2000].astype(np.float64) ** 2).mean(0))
    for share in (0.01, 0.05):
        kappa = np.zeros(n, np.float32)
        kappa[np.argsort(-rms)[:int(share * n)]] = 0.5
        res.append(f"with 0.5 of a write coming back in the loudest {share:.0%} of the cells "
                   f"only (by the model's RMS) "
                   + replay_counts(lambda i: M[i], T, n, k, feedback=(kappa, 0.5)))
    M = None                                     # noqa: F841
    # point 5: fitted on the last quarter of the long recording, run for the whole length
    from timesim.simulate import simulate
    from timesim.trace.fit import fit_trace
    from timesim.trace.fitted import write_model

    y = work / "fit-mlp-topk-8000-0.75.yaml"
    write_model(y, *fit_trace(trace, start=0.75))
    r = simulate(_hw("topk"), f"synth:fit?model={y}&iterations=64000")
    real = json.loads((work / "real-mlp-topk" / "report.json").read_text())["writes"]["max"]
    return ["10. fc2 under top-k, max writes at iterations 2000 / 4000 / 8000: " + "; ".join(res),
            f"5. fitted on iterations 6000–7999 of the 8000-iteration recording: max writes "
            f"{r['writes']['max']} ({r['writes']['max'] / real:.2f}× the real {real}); per layer "
            + ", ".join(f"{name} {v['max']}" for name, v in r["writes"]["by_layer"].items())]


def replay_counts(row, T: int, n: int, k: int, feedback=None) -> str:
    """Top-k with local accumulation over ``row(i)``, i < T; with ``feedback = (κ, ρ)`` each
    written value A comes back as −κ(1−ρ)ρ^(l−1)·A at lags l = 1..16 (κ: a number, or one
    per cell)."""
    A = np.zeros(n, np.float32)
    count = np.zeros(n, np.int64)
    ring, marks = [], []
    if feedback:
        kappa = np.broadcast_to(np.asarray(feedback[0], np.float32), (n,))
        w = np.array([(1 - feedback[1]) * feedback[1] ** l for l in range(16)], np.float32)
    for i in range(T):
        A += row(i)
        if feedback:
            for lag, (idx, val) in enumerate(reversed(ring)):
                A[idx] -= w[lag] * kappa[idx] * val
        idx = np.argpartition(-np.abs(A), k)[:k]
        count[idx] += 1
        if feedback:
            ring = (ring + [(idx, A[idx].copy())])[-16:]
        A[idx] = 0
        if i + 1 in (2000, 4000, 8000):
            marks.append(str(int(count.max())))
    return " / ".join(marks)


def _smooth(X: np.ndarray) -> np.ndarray:
    """The smoothed σ(t) of a (iterations, cells) gradient, as the fit computes it."""
    from timesim.trace.fit import _fit_scale
    from timesim.trace.fitted import scale_curve

    s = np.sqrt((X ** 2).mean(1))
    kt, ks, slope, _ = _fit_scale(s)
    return scale_curve(np.arange(len(s), dtype=float), kt, np.log(ks), -slope)


if __name__ == "__main__":
    main()

"""Synthetic workloads fitted to a real trace (``timesim trace fit``, ``synth:fit?model=...``).

The model of one layer's gradient at iteration t (docs/fidelity.md):

    G_t[r, c] = σ(t) · s_r(t) · q_c(t) · (b · m_t[r, c] + z_t[r, c])

- σ(t): the layer's gradient scale over training: the recorded trace's (smoothed) scale inside
  the recorded iterations, a power law fitted to its second half beyond them;
- s_r(t) = s_r · exp(δ_row · x_r(t)), q_c(t) = q_c · exp(δ_col · x_c(t)): row and column
  importance, persistent (s, q: the trace's own, from a two-way fit of log per-cell RMS; rows
  or columns that never get a gradient, such as dead ReLUs or blank border pixels, stay 0) with
  a drifting part x of unit variance and correlation time τ_importance;
- m_t: a unit-normal direction field of correlation time τ_direction, b its strength against
  the fresh noise z (kernels/select.py).

The drifting fields are *keyframe* processes: independent unit-normal keyframes K_j every τ
iterations, x(t) = cos(π f / 2) · K_j + sin(π f / 2) · K_{j+1} with j = ⌊t / τ⌋, f = t / τ − j:
unit variance at every t, correlation cos(π Δ / 2τ) inside a keyframe interval and 0 beyond
two, and any t is computed from two keyframes, so the stream stays a pure function of
(seed, layer, iteration) and a resumed run needs no history. The direction field changes
every ``block`` iterations (a piece of the fused kernels); the importances every iteration.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import yaml

from .. import yamlio
from ..errors import TraceError
from ..kernels.synth import _fitted_factors, normal
from .format import MAX_ITERATIONS, TraceMeta, _layer
from .synth import SynthTrace, default_chunk

FORMAT = "timesim-fit"
VERSION = 1
# stream tags (above the layer)
_DIRECTION, _ROW, _COL, _ROW_GATE, _COL_GATE, _LOUD = 1, 2, 3, 4, 5, 6
_EPS = 1e-30
# probabilities at which a gate's quantile table is kept: uniform, then finer in the upper tail
GATE_PROBS = np.unique(np.concatenate([np.linspace(0, 1, 97),
                                       1 - np.logspace(-2, -5, 10)]))
_GATE_GRID = 96                    # GATE_PROBS starts with the uniform grid k / 96
_IMP_BLOCKS = 64                   # importance blocks computed at a time (≤ 2^18 values)
_HIST_LO, _HIST_HI, _HIST_BINS = -5.0, 3.0, 800        # log10 bins of the gate histograms


def gate_table(hist: np.ndarray, zeros: int) -> np.ndarray:
    """Quantiles (at GATE_PROBS) of a gate from its log10 histogram and its count of exact
    zeros, scaled to E[gate²] = 1."""
    edges = np.linspace(_HIST_LO, _HIST_HI, _HIST_BINS + 1)
    total = zeros + hist.sum()
    if total == 0 or hist.sum() == 0:
        return np.ones_like(GATE_PROBS)
    cum = zeros + np.cumsum(hist)                       # count at or below each bin's top
    q = np.zeros_like(GATE_PROBS)
    for i, p in enumerate(GATE_PROBS):
        target = p * total
        if zeros > 0 and target <= zeros:
            continue                                    # inside the mass at exactly 0
        target = max(target, zeros + 1e-9 * total)      # p = 0: the smallest non-zero value
        b = min(int(np.searchsorted(cum, target)), _HIST_BINS - 1)  # first bin reaching it
        below = cum[b] - hist[b]
        f = (target - below) / hist[b] if hist[b] else 1.0
        q[i] = 10 ** (edges[b] + min(max(f, 0.0), 1.0) * (edges[b + 1] - edges[b]))
    q[-1] = q[-2]           # the sample maximum is one outlier: the table ends flat at 1 − 1e-5
    return q / math.sqrt(gate_moments(q)[1])


def gate_moments(table: np.ndarray) -> tuple[float, float, float]:
    """E[g], E[g²], E[g⁴] of a gate drawn by inverse CDF from its quantile table."""
    u = (np.arange(1 << 16) + 0.5) / (1 << 16)
    g = np.interp(u, GATE_PROBS, table)
    return float(g.mean()), float((g ** 2).mean()), float((g ** 4).mean())


def keyframe_weights(t, tau: float):
    """(j, cos, sin) of the keyframe process at iteration(s) t."""
    if np.ndim(t) == 0:                          # one time (the common case): no numpy
        u = float(t) / tau
        j = math.floor(u)
        f = u - j
        return j, math.cos(0.5 * math.pi * f), math.sin(0.5 * math.pi * f)
    u = np.asarray(t, dtype=np.float64) / tau
    j = np.floor(u)
    f = u - j
    return j.astype(np.int64), np.cos(0.5 * np.pi * f), np.sin(0.5 * np.pi * f)


def keyframe_correlation(lag: float, tau: float, phases: int = 256) -> float:
    """corr(x(t), x(t + lag)) of the keyframe process, averaged over t (its phase)."""
    t = (np.arange(phases) + 0.5) / phases * tau
    j1, c1, s1 = keyframe_weights(t, tau)
    j2, c2, s2 = keyframe_weights(t + lag, tau)
    same = j2 == j1
    next_ = j2 == j1 + 1
    return float(np.mean(np.where(same, c1 * c2 + s1 * s2, np.where(next_, s1 * c2, 0.0))))


# --------------------------------------------------------------------------------------------
# fitting


def _loglog_slope(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of log y on log t, and its R²."""
    ok = (y > 0) & (t > 0)
    if ok.sum() < 3:
        return 0.0, 0.0
    x, v = np.log(t[ok]), np.log(y[ok])
    a, b = np.polyfit(x, v, 1)
    res = v - (a * x + b)
    tot = ((v - v.mean()) ** 2).sum()
    return float(a), float(1 - (res ** 2).sum() / tot) if tot > 0 else 1.0


def window_correlation(k: np.ndarray, wlen: int, tau: float, phases: int = 64) -> np.ndarray:
    """corr(x̄_w, x̄_{w+k}) of the keyframe process's means over windows of ``wlen`` iterations,
    k windows apart (k ≥ 1), relative to x's unit variance: the correlation at lag Δ averaged
    over the pairs of iterations (Δ = k·wlen + d, triangular weights on d in (−wlen, wlen))
    and over the phase of t (as keyframe_correlation)."""
    d = np.arange(-wlen + 1, wlen, max(1, wlen // 16))
    w = (wlen - np.abs(d)).astype(np.float64)
    lag = np.asarray(k, dtype=np.float64)[:, None, None] * wlen + d[None, :, None]
    t = (np.arange(phases) + 0.5) / phases * tau
    j1, c1, s1 = keyframe_weights(t, tau)
    j2, c2, s2 = keyframe_weights(t + lag, tau)
    rho = np.where(j2 == j1, c1 * c2 + s1 * s2, np.where(j2 == j1 + 1, s1 * c2, 0.0))
    return (rho.mean(2) * w).sum(1) / w.sum()


def _fit_direction(cov: np.ndarray, wlen: int, horizon: float) -> tuple[float, float, float]:
    """(B, τ, RMSE) of cov[k−1] ≈ B · window_correlation(k, wlen, τ), k = 1..len(cov), B ≥ 0
    (least squares for each τ of a grid in log τ, from one window to 64 × the recorded span).
    The covariances of *different* windows' means hold no fresh noise, short-lag
    correlation of the noise included: what is left is the direction's own covariance."""
    k = np.arange(1, len(cov) + 1)
    taus = np.exp(np.linspace(np.log(max(1.0, wlen / 2)), np.log(64 * horizon), 48))
    best = (0.0, float(taus[-1]), float(np.sqrt(np.mean(cov ** 2))))
    for tau in taus:
        rho = window_correlation(k, wlen, tau)
        B = max(0.0, float(np.dot(rho, cov) / max(np.dot(rho, rho), _EPS)))
        e = float(np.sqrt(np.mean((cov - B * rho) ** 2)))
        if B > 0 and e < best[2]:
            best = (B, float(tau), e)
    return best


def _fit_tau(lags: np.ndarray, rho: np.ndarray, horizon: float) -> tuple[float, float]:
    """τ whose keyframe correlation best matches ρ at the lags (grid search in log τ); its RMSE.
    τ is searched from one window to 64 × the recorded span."""
    taus = np.exp(np.linspace(np.log(max(1.0, lags.min() / 2)), np.log(64 * horizon), 96))
    best, err = taus[-1], np.inf
    for tau in taus:
        model = np.array([keyframe_correlation(lag, tau) for lag in lags])
        e = float(np.sqrt(np.mean((model - rho) ** 2)))
        if e < err:
            best, err = tau, e
    return float(best), err


def _fit_scale(sig: np.ndarray, knots: int = 16):
    """(knot iterations, knot scales, log-log slope of the second half, its R²) of a layer's
    recorded per-iteration scale: geometric means over ``knots`` equal windows."""
    K = len(sig)
    kw = K // knots
    knots_t = (np.arange(knots) + 0.5) * kw
    knots_s = np.array([np.exp(np.mean(np.log(np.maximum(sig[w * kw:(w + 1) * kw], _EPS))))
                        for w in range(knots)])
    t = np.arange(K)
    half = t >= K // 2
    slope, r2 = _loglog_slope(t[half] + 1.0, sig[half])
    return knots_t, knots_s, slope, r2


def scale_curve(t: np.ndarray, knots_t: np.ndarray, knots_log: np.ndarray,
                gamma: float) -> np.ndarray:
    """σ(t): log-linear between knots, flat before the first, power law t^−γ after the last."""
    t = np.asarray(t, dtype=np.float64)
    last = knots_t[-1]
    if t.size and t[0] > last:               # past the recording (most of a long run)
        return np.exp(knots_log[-1] - gamma * np.log((t + 1) / (last + 1)))
    s = np.interp(t, knots_t, knots_log)
    beyond = t > last
    s = np.where(beyond, knots_log[-1] - gamma * np.log(np.maximum(t + 1, 1) / (last + 1)), s)
    return np.exp(s)


def _two_way(L: np.ndarray, ok: np.ndarray, sweeps: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """log R[r, c] ≈ α_r + β_c over the cells ``ok`` (alternating means)."""
    rows, cols = L.shape
    a = np.zeros(rows)
    b = np.zeros(cols)
    w = ok.astype(np.float64)
    Lw = np.where(ok, L, 0.0)
    nr = np.maximum(w.sum(1), 1)
    nc = np.maximum(w.sum(0), 1)
    for _ in range(sweeps):
        a = (Lw - w * b[None, :]).sum(1) / nr
        b = (Lw - w * a[:, None]).sum(0) / nc
    m = b[nc > 0].mean() if (w.sum(0) > 0).any() else 0.0
    return a + m, b - m


def fit_trace(trace, windows: int = 8, start: float = 0.5,
              progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Fit the model to every layer of a recorded trace (two streaming passes; memory: a few
    arrays per layer, independent of the trace's length). Returns (YAML document, arrays).

    ``start``: the statistics (importances, gates, direction, drift) come from the iterations
    from that fraction of the trace on (default the second half: the latest behaviour is the
    best guess of what follows; the first iterations of training move fastest); the scale
    σ(t) from all of them."""
    from ..kernels.convert import to_float32
    from . import open_trace

    trace = open_trace(trace)
    meta = trace.meta
    K = meta.iterations
    if meta.timing_only:
        raise TraceError(f"{trace.path}: a timing-only manifest has no gradients to fit")
    if K < 64:
        raise TraceError(f"{getattr(trace, 'path', meta.model)}: {K} iterations; the fit "
                         f"needs at least 64 (a few hundred to a few thousand)")
    if not 0 <= start <= 0.75:
        raise TraceError(f"start: must be in [0, 0.75] (a fraction of the trace), got {start}")
    t_first = int(start * K)
    span = K - t_first
    windows = int(max(4, min(windows, span // 8)))
    wlen = span // windows                  # iterations per window (the tail is left out)
    used = wlen * windows                   # statistics from t_first .. t_first + used - 1
    # the block length of the variance ratio (a goodness-of-fit number): a power of two, at
    # most a window and an eighth of the statistics
    n_vr = 1 << max(1, int(math.log2(max(2, min(wlen, used // 8)))))

    def chunks():
        """(t0, n, layer, float64 gradients) in slices of at most ~8 M values (~64 MB), so
        memory stays bounded whatever the recorded chunk size."""
        for ch in trace.chunks():
            for layer in meta.layers:
                raw = np.asarray(ch.arrays[layer.name])
                step = max(1, (8 << 20) // layer.cells)
                for i in range(0, ch.n, step):
                    part = to_float32(np.ascontiguousarray(raw[i:i + step]), meta.dtype)
                    yield _Slice(ch.t0 + i, part.shape[0]), layer, np.asarray(part,
                                                                            dtype=np.float64)

    # pass 1: per-iteration scale and per-cell mean square of the scale-normalised gradient
    sigma = {layer.name: np.zeros(K) for layer in meta.layers}
    sq = {layer.name: np.zeros((layer.rows, layer.cols)) for layer in meta.layers}
    for ch, layer, g in chunks():
        s = np.sqrt((g ** 2).reshape(ch.n, -1).mean(1))
        if not np.isfinite(s).all():
            raise TraceError(f"{layer.name}: non-finite gradients in iterations {ch.t0}.."
                             f"{ch.t0 + ch.n - 1}; fit a trace without them")
        sigma[layer.name][ch.t0:ch.t0 + ch.n] = s
        h = g / np.maximum(s, _EPS)[:, None, None]
        keep = ch.t0 + np.arange(ch.n) >= t_first
        sq[layer.name] += (h[keep] ** 2).sum(0)
        if progress:
            progress(0.5 * (ch.t0 + ch.n) / K)
    imp = {}
    row_ms = {k: v.mean(1) / span for k, v in sq.items()}
    col_ms = {k: v.mean(0) / span for k, v in sq.items()}
    for layer in meta.layers:
        R = np.sqrt(sq[layer.name] / span)
        live = R > 1e-6 * max(np.median(R[R > 0]) if (R > 0).any() else 1.0, _EPS)
        L = np.log(np.maximum(R, _EPS))
        a, b = _two_way(L, live)
        dead_r = ~live.any(1)
        dead_c = ~live.any(0)
        res = (L - a[:, None] - b[None, :])[live]
        tot = ((L[live] - L[live].mean()) ** 2).sum() if live.any() else 0.0
        r2 = float(1 - (res ** 2).sum() / tot) if tot > 0 else 1.0
        # what the row × column fit leaves: each cell's own noise scale (0 where no gradient)
        cell = np.where(live, np.exp(L - a[:, None] - b[None, :]), 0.0)
        imp[layer.name] = (np.where(dead_r, 0.0, np.exp(a)), np.where(dead_c, 0.0, np.exp(b)),
                           dead_r, dead_c, r2, live, cell)

    # the scale σ(t) as the model has it: knots of the smoothed recorded scale, then a power law
    scales = {name: _fit_scale(sig) for name, sig in sigma.items()}
    smooth = {name: scale_curve(np.arange(K, dtype=np.float64), kt, np.log(ks), -slope)
              for name, (kt, ks, slope, _) in scales.items()}

    # pass 2: window means of g / σ(t) (direction), noise moments, row/col window RMS, gates
    acc = {}
    for layer in meta.layers:
        acc[layer.name] = dict(
            mean=np.zeros((windows, layer.rows, layer.cols)),
            # sums of u over blocks of n_vr iterations: the running sum, its value at the last
            # block boundary, Σ over complete blocks and cells of S², Σ of u²
            cum=np.zeros((layer.rows, layer.cols)), last=np.zeros((layer.rows, layer.cols)),
            s2=0.0, blocks=0, u2=0.0, u2c=np.zeros((layer.rows, layer.cols)),
            m2=0.0, count=0, h4=np.zeros((layer.rows, layer.cols)),
            u4=np.zeros((layer.rows, layer.cols)),
            row=np.zeros((2, windows, layer.rows)), col=np.zeros((2, windows, layer.cols)),
            gate={"row": np.zeros(_HIST_BINS), "col": np.zeros(_HIST_BINS),
                  "loud": np.zeros(_HIST_BINS)},
            gate_zeros={"row": 0, "col": 0, "loud": 0})
    for ch, layer, g in chunks():
        s_r, q_c, dead_r, dead_c, _, live, _ = imp[layer.name]
        a = acc[layer.name]
        sig = np.maximum(sigma[layer.name][ch.t0:ch.t0 + ch.n], _EPS)
        h = g / sig[:, None, None]
        # the direction is measured on g / σ(t) with the *smoothed* σ the model multiplies
        # by: normalised per iteration, a gradient's mean changes meaning. Near a minimum
        # most batches push a weight one way and a few loud ones push it back, so that g
        # sums to ~0 (the weight stays put) while g / (its own iteration's scale) keeps the
        # quiet batches' push: a persistent direction that the real run does not have
        u = g / np.maximum(smooth[layer.name][ch.t0:ch.t0 + ch.n], _EPS)[:, None, None]
        t = ch.t0 + np.arange(ch.n)
        inside = (t >= t_first) & (t < t_first + used)
        if not inside.any():
            continue
        h, u, t = h[inside], u[inside], t[inside] - t_first
        # the layer's loudness: each iteration's scale over the smoothed σ(t) (a loud batch
        # makes every cell of the layer loud at once)
        lam = sig[inside] / np.maximum(smooth[layer.name][ch.t0:ch.t0 + ch.n][inside], _EPS)
        a["gate_zeros"]["loud"] += int((lam <= _EPS).sum())
        a["gate"]["loud"] += np.histogram(np.clip(np.log10(lam[lam > _EPS]), _HIST_LO,
                                                  _HIST_HI - 1e-9), bins=_HIST_BINS,
                                          range=(_HIST_LO, _HIST_HI))[0]
        # gates: each row's (column's) per-iteration RMS over its RMS across the trace
        for axis, dim, ms_all in (("row", 2, row_ms[layer.name]), ("col", 1, col_ms[layer.name])):
            alive = ms_all > 0
            x = np.sqrt((h ** 2).mean(dim)[:, alive] / ms_all[alive])
            # weighted by each row's (column's) power: the rows that carry the gradient
            # set its shape; a rarely active row is spiky but holds little of it
            wt = np.broadcast_to(ms_all[alive], x.shape)
            a["gate_zeros"][axis] += float(wt[x == 0].sum())
            lx = np.log10(x[x > 0])
            a["gate"][axis] += np.histogram(np.clip(lx, _HIST_LO, _HIST_HI - 1e-9),
                                            bins=_HIST_BINS, range=(_HIST_LO, _HIST_HI),
                                            weights=wt[x > 0])[0]
        for w in np.unique(t // wlen):
            sel = (t // wlen) == w
            hw = h[sel]
            h2 = hw * hw                  # squares by multiplication: x ** 4 is a slow pow()
            for parity in (0, 1):
                hp = h2[t[sel] % 2 == parity]
                a["row"][parity, w] += hp.mean(2).sum(0)
                a["col"][parity, w] += hp.mean(1).sum(0)
            # weighted by power, as the policies see it (cells with little gradient matter
            # little, whatever their mean)
            uw = u[sel]
            u2 = uw * uw
            a["mean"][w] += uw.sum(0)
            u2s = u2.sum(0)
            a["u2c"] += u2s
            a["m2"] += float(u2s[live].sum())
            a["h4"] += (h2 * h2).sum(0)
            a["u4"] += (u2 * u2).sum(0)
            a["count"] += int(live.sum()) * hw.shape[0]
        _block_sums(a, u, t, n_vr)
        if progress:
            progress(0.5 + 0.5 * (ch.t0 + ch.n) / K)

    layers_doc, arrays = [], {}
    for layer in meta.layers:
        name = layer.name
        s_r, q_c, dead_r, dead_c, r2, live, cell = imp[name]
        a = acc[name]
        # direction strength b and correlation time, from the covariances of the means of
        # *different* windows (power-weighted over the cells, as the policies see them): the
        # mean square of a window's own mean holds the noise's correlation over a few
        # iterations as well, which is not a direction (docs/fidelity.md)
        mean_w = a["mean"] / wlen                         # (W, rows, cols)
        m2 = a["m2"] / max(a["count"], 1)
        cov = np.array([(mean_w[:-lag, live] * mean_w[lag:, live]).mean() if live.any() else 0.0
                        for lag in range(1, windows)])     # a layer with no gradient: none
        B, tau_d, err = _fit_direction(cov, wlen, used)
        # what the model does not have: the variance of a cell's gradient summed over n
        # iterations against n times its variance, real and model (the model's only
        # correlation over time is the direction's); real gradients revert (< 1), a weight
        # near its optimum being pushed back (docs/fidelity.md)
        vr = (a["s2"] / max(a["blocks"] * n_vr, 1) / (a["u2"] / used) if a["u2"] > 0
              else 1.0)
        vr_model = _direction_variance_ratio(n_vr, min(B / max(m2, _EPS), 1.0), tau_d)
        b2 = B / max(m2 - B, _EPS)
        err_d = err / max(m2 / wlen, _EPS)    # against the noise variance of one window's mean
        beta = _bias_exponent(mean_w, sq[name] / span, np.outer(s_r, q_c), live) if B else 0.0
        gates = {axis: gate_table(a["gate"][axis], a["gate_zeros"][axis])
                 for axis in ("row", "col", "loud")}
        # each cell's kurtosis E[h⁴] / E[h²]², averaged with weights E[h²] (power)
        h2c = sq[name] / span
        kurt = float((a["h4"][live] / used / np.maximum(h2c[live], _EPS)).sum()
                     / max(h2c[live].sum(), _EPS))
        u2c = a["u2c"] / used
        kurt_raw = float((a["u4"][live] / used / np.maximum(u2c[live], _EPS)).sum()
                         / max(u2c[live].sum(), _EPS))
        gates["row"], gates["col"], alpha = _temper_gates(gates["row"], gates["col"],
                                                          math.sqrt(b2), kurt)
        g_row, g_col = gate_moments(gates["row"]), gate_moments(gates["col"])
        # the mean part is gated too: what the windows see is E[gate_r]·E[gate_c]·b (the
        # loudness λ is the batch noise's: the mean, the whole data's gradient, has none)
        gain = 1.0 / max(g_row[0] * g_col[0], 1e-3)
        bias = math.sqrt(b2) * gain
        table = _bias_table(mean_w, a["u2c"] / used, np.sqrt(sq[name] / span), live, wlen,
                            tau_d, gain) if B else []
        lags = np.arange(1, windows, dtype=float) * wlen
        # importance drift: deviations of each window's log mean square of a row (column)
        # from its mean over windows, measured apart on even and odd iterations: their
        # covariance is the drift's, without the sampling noise (independent between the two)
        drift = {}
        for axis in ("row", "col"):
            ms = a[axis] / (wlen / 2)                      # (2, W, n)
            ok = (ms > 0).all(axis=(0, 1))
            if ok.sum() < 2:
                drift[axis] = (0.0, float(used), 0.0)
                continue
            lm = 0.5 * np.log(ms[:, :, ok])
            dev = lm - lm.mean(1, keepdims=True)
            var = float(np.mean(dev[0] * dev[1]))
            if var <= 0:
                drift[axis] = (0.0, float(used), 0.0)
                continue
            rho_i = [float(np.mean([(dev[0, w] * dev[1, w + lag]).mean()
                                    + (dev[1, w] * dev[0, w + lag]).mean()
                                    for w in range(windows - lag)])) / (2 * var)
                     for lag in range(1, windows)]
            tau_i, err_i = _fit_tau(np.array(lags, float), np.clip(rho_i, -1, 1), used)
            drift[axis] = (math.sqrt(var), tau_i, err_i)
        # the importances' RMS over time includes exp(2δ²) from the drift: take it out
        s_fit = s_r * math.exp(-drift["row"][0] ** 2)
        q_fit = q_c * math.exp(-drift["col"][0] ** 2)
        knots_t, knots_s, slope, r2_scale = scales[name]
        layers_doc.append({
            "layer": {k: v for k, v in layer.to_dict().items()},
            "row_sigma": _r(np.log(s_fit[~dead_r]).std() if (~dead_r).sum() > 1 else 0.0),
            "cell_sigma": _r(np.log(cell[live]).std() if live.sum() > 1 else 0.0),
            "col_sigma": _r(np.log(q_fit[~dead_c]).std() if (~dead_c).sum() > 1 else 0.0),
            "dead_rows": int(dead_r.sum()), "dead_cols": int(dead_c.sum()),
            "bias": _r(bias), "bias_exponent": _r(beta),
            "bias_by_rms": [[_r(x), _r(y)] for x, y in table],
            "tau_direction": _r(tau_d),
            "row_drift": _r(drift["row"][0]), "col_drift": _r(drift["col"][0]),
            "tau_importance": _r(math.sqrt(drift["row"][1] * drift["col"][1])),
            "scale": {"knots": [[_r(t), _r(s, 6)] for t, s in zip(knots_t, knots_s)],
                      "gamma": _r(-slope)},
            "fit": {"importance_r2": _r(r2), "scale_r2": _r(r2_scale),
                    "direction_rmse": _r(err_d),
                    "variance_ratio": {"iterations": n_vr, "real": _r(vr),
                                       "model": _r(vr_model)},
                    "importance_rmse": _r(max(drift["row"][2], drift["col"][2])),
                    "kurtosis": _r(kurt),
                    "kurtosis_model": _r(_model_kurtosis(bias, g_row, g_col)),
                    "gate_exponent": _r(alpha),
                    "kurtosis_raw": _r(kurt_raw),
                    "kurtosis_raw_model": _r(_model_kurtosis(bias, g_row, g_col)
                                             * gate_moments(gates["loud"])[2])},
            "gates": {"row_zero": _r(float((gates["row"] == 0).mean())),
                      "col_zero": _r(float((gates["col"] == 0).mean())),
                      "row_m4": _r(g_row[2]), "col_m4": _r(g_col[2]),
                      "loud_m4": _r(gate_moments(gates["loud"])[2])},
        })
        arrays[f"{name}/row_gate"] = gates["row"].astype(np.float64)
        arrays[f"{name}/col_gate"] = gates["col"].astype(np.float64)
        arrays[f"{name}/loud_gate"] = gates["loud"].astype(np.float64)
        arrays[f"{name}/row"] = s_fit.astype(np.float32)
        arrays[f"{name}/cell"] = cell.astype(np.float32)
        arrays[f"{name}/col"] = q_fit.astype(np.float32)
    doc = {"format": FORMAT, "version": VERSION, "model": meta.model, "dataset": meta.dataset,
           "batch_size": meta.batch_size,
           "source": {"trace": str(getattr(trace, "path", "")), "iterations": K,
                      "statistics_from": t_first, "windows": windows},
           "layers": layers_doc}
    return doc, arrays


def _bias_exponent(mean_w, h2, sq, live, bins: int = 8) -> float:
    """β of b(cell) ∝ (s_r q_c)^(−β): how the persistent mean's share of a cell's gradient
    falls (β > 0) with its power. Cells in quantile bins of s_r q_c; per bin the covariance of
    adjacent windows' means (free of the noise, as in the fit of b) over the power; a
    power-weighted fit of log b on log s_r q_c."""
    x = sq[live]
    if x.size < 4 * bins:
        return 0.0
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    c1 = (mean_w[:-1, live] * mean_w[1:, live]).mean(0)
    p = h2[live]
    lx, lb, wt = [], [], []
    for k in range(bins):
        sel = idx == k
        if not sel.any():
            continue
        pw = p[sel].mean()
        b2 = c1[sel].mean() / max(pw, _EPS)
        if b2 > 0:
            lx.append(np.log(x[sel].mean()))
            lb.append(0.5 * np.log(b2))
            wt.append(p[sel].sum())
    if len(lx) < 3:
        return 0.0
    slope = np.polyfit(lx, lb, 1, w=np.sqrt(wt))[0]
    return float(np.clip(-slope, 0.0, 1.0))


def _temper_gates(row: np.ndarray, col: np.ndarray, b: float,
                  kurt: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The row and column gates raised to the power α ∈ [0, 1] (and rescaled to unit power)
    that gives the model's cell kurtosis the recording's (on gradients normalised by each
    iteration's scale). A batch gradient is a sum of a few outer products: a row's RMS at an
    iteration times a column's already holds most of a cell's magnitude, and the model's
    fresh noise multiplies them again — measured as they are, the gates give cells 2–3× the
    recorded kurtosis (docs/fidelity.md). α = 1 where they do not. A gate's exact zeros (a
    row or column with no gradient in an iteration) are kept."""
    def tempered(a):
        # exact zeros (a row or column with no gradient in an iteration) stay zeros
        r, c = np.where(row > 0, row ** a, 0.0), np.where(col > 0, col ** a, 0.0)
        r, c = r / math.sqrt(gate_moments(r)[1]), c / math.sqrt(gate_moments(c)[1])
        return r, c, _model_kurtosis(b, gate_moments(r), gate_moments(c))

    r, c, k1 = tempered(1.0)
    if k1 <= kurt:
        return row, col, 1.0
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tempered(mid)[2] < kurt else (lo, mid)
    r, c, _ = tempered(lo)
    return r, c, lo


def _bias_table(mean_w, u2, rms, live, wlen: int, tau: float, gain: float,
                bins: int = 8) -> list[tuple[float, float]]:
    """The direction's strength b by a cell's RMS: [(RMS relative to the layer's RMS, b)] for
    ``bins`` quantile bins of the live cells' RMS (the cell's own, s_r·q_c·W, which is what the
    model scales it by). Per bin, the covariances of different windows' means are fitted as
    B·(the direction's correlation of window means) with the layer's τ, as the layer's b is;
    b² = B / (E[u²] − B), times ``gain`` (the gates' means). Real gradients are not a power
    law in the RMS: the quiet half of the cells keeps a push of similar strength, the loudest
    cells none (they revert), docs/fidelity.md."""
    x = rms[live]
    if x.size < 4 * bins or len(mean_w) < 2:
        return []
    ref = math.sqrt(float((x ** 2).mean()))
    order = np.argsort(x, kind="stable")
    lags = np.arange(1, len(mean_w))
    rho = window_correlation(lags, wlen, tau)
    mw = mean_w[:, live]
    p = u2[live]
    out = []
    for sel in np.array_split(order, bins):
        cov = np.array([(mw[:-k, sel] * mw[k:, sel]).mean() for k in lags])
        Bk = max(0.0, float(np.dot(rho, cov) / max(np.dot(rho, rho), _EPS)))
        m2 = float(p[sel].mean())
        bk = math.sqrt(Bk / max(m2 - Bk, _EPS * m2, _EPS)) * gain if Bk > 0 else 0.0
        out.append((float(np.exp(np.log(np.maximum(x[sel], _EPS)).mean())) / ref, bk))
    return out


def _block_sums(a: dict, u: np.ndarray, t: np.ndarray, n: int) -> None:
    """Accumulate Σ over cells and aligned blocks of n iterations of S², S the sum of u over
    the block; t: the iterations of u (consecutive, from the statistics' start)."""
    cs = np.cumsum(u, axis=0) + a["cum"]                   # running sum after each iteration
    a["u2"] += float((u ** 2).sum())
    ends = np.nonzero((t + 1) % n == 0)[0]
    if ends.size:
        at = cs[ends]
        prev = np.concatenate([a["last"][None], at[:-1]])
        a["s2"] += float(((at - prev) ** 2).sum())
        a["blocks"] += ends.size
        a["last"] = at[-1]
    a["cum"] = cs[-1]


def _direction_variance_ratio(n: int, share: float, tau: float) -> float:
    """Var(sum of n iterations) / (n · variance) of iid noise plus a direction holding
    ``share`` of the power, correlated as the keyframe process of time τ."""
    if n < 2:
        return 1.0
    d = np.arange(1, n)
    rho = np.array([keyframe_correlation(x, tau, 64) for x in d])
    return float(1 + share * np.dot(2 * (n - d), rho) / n)


class _Slice:
    """Iterations t0 .. t0+n-1 of a chunk (what the fit's passes need of it)."""

    __slots__ = ("t0", "n")

    def __init__(self, t0: int, n: int):
        self.t0, self.n = t0, n


def _model_kurtosis(b: float, g_row, g_col) -> float:
    """Kurtosis of gate_r · gate_c · (b·m + z) with m ~ N(0,1), z Irwin-Hall (kurtosis 2.7)
    and unit-power gates: E[g⁴] of both times that of b·m + z."""
    return g_row[2] * g_col[2] * (3 * b ** 4 + 6 * b ** 2 + 2.7) / (1 + b ** 2) ** 2


def _r(x, digits: int = 4):
    """A float rounded for a readable YAML."""
    x = float(x)
    return float(f"{x:.{digits}g}")


def write_model(path: str | Path, doc: dict, arrays: dict[str, np.ndarray]) -> Path:
    """``path`` (YAML) and the per-row / per-column importances beside it (same stem, .npz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = path.with_suffix(".npz")
    np.savez_compressed(side, **arrays)
    doc = dict(doc)
    doc["importances"] = side.name
    doc["importances_sha256"] = hashlib.sha256(side.read_bytes()).hexdigest()
    path.write_text("# timesim fitted workload (timesim trace fit); docs/fidelity.md\n"
                    + yaml.safe_dump(doc, sort_keys=False, width=100))
    return path


# --------------------------------------------------------------------------------------------
# replay


class FittedLayer:
    """One layer's parameters and the generator arguments of its pieces."""

    def __init__(self, index: int, raw: dict, row: np.ndarray, col: np.ndarray,
                 gates: tuple[np.ndarray, np.ndarray], where: str,
                 cell: np.ndarray | None = None, loud: np.ndarray | None = None):
        self.index = index
        self.info = _layer(raw.get("layer"), f"{where}: layers[{index}].layer")
        name = self.info.name
        w = f"{where}: layer {name}"
        if row.shape != (self.info.rows,) or col.shape != (self.info.cols,):
            raise TraceError(f"{w}: importances {row.shape}/{col.shape}, expected "
                             f"({self.info.rows},)/({self.info.cols},)")
        if not (np.isfinite(row).all() and np.isfinite(col).all()) or (row < 0).any() \
                or (col < 0).any():
            raise TraceError(f"{w}: importances: expected finite non-negative values")
        self.row, self.col = row.astype(np.float64), col.astype(np.float64)
        if cell is not None and (cell.shape != (self.info.rows, self.info.cols)
                                 or not np.isfinite(cell).all() or (cell < 0).any()):
            raise TraceError(f"{w}: cell scales: expected ({self.info.rows}, "
                             f"{self.info.cols}) finite non-negative values")
        self.cell = (cell.astype(np.float32) if cell is not None
                     else np.zeros((0, 0), np.float32))
        for g in gates + ((loud,) if loud is not None else ()):
            if g.shape != GATE_PROBS.shape or not np.isfinite(g).all() or (g < 0).any() \
                    or (np.diff(g) < 0).any():
                raise TraceError(f"{w}: gate table: expected {GATE_PROBS.size} increasing "
                                 f"non-negative quantiles")
        self.row_gate, self.col_gate = gates
        self.loud = loud
        self._loud_args = ((loud, np.diff(loud) / np.diff(GATE_PROBS), np.diff(loud[:_GATE_GRID]))
                           if loud is not None else (np.zeros(0), np.zeros(0), np.zeros(0)))
        self._slopes = tuple(np.diff(g) / np.diff(GATE_PROBS) for g in gates)
        self._steps = tuple(np.diff(g[:_GATE_GRID]) for g in gates)
        get = _Getter(raw, w)
        self.bias = get.num("bias", 0, 100)
        beta = get.num("bias_exponent", 0, 1) if "bias_exponent" in raw else 0.0
        # per-cell strength b·(power / ref)^(−β), with the power-weighted mean of b² kept; the
        # mean follows a cell's own noise scale W too (the noise term is scaled by it)
        w_cell = self.cell.astype(np.float64) if self.cell.size else 1.0
        sq = np.outer(self.row, self.col) * w_cell
        live = sq > 0
        table = raw.get("bias_by_rms")
        if table:
            try:
                tb = np.array(table, dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                tb = np.zeros((0, 2))
            if len(tb) < 1 or not np.isfinite(tb).all() or (tb[:, 0] <= 0).any() \
                    or (tb[:, 1] < 0).any() or (tb[:, 1] > 100).any() \
                    or (np.diff(tb[:, 0]) <= 0).any():
                raise TraceError(f"{w}: bias_by_rms: expected [relative RMS, bias] pairs with "
                                 f"increasing positive RMS and bias in [0, 100]")
            rms = np.sqrt((sq[live] ** 2).mean()) if live.any() else 1.0
            lr = np.log(np.maximum(sq / rms, _EPS))
            bc = np.interp(lr, np.log(tb[:, 0]), tb[:, 1])
            self.cell_bias = np.where(live, bc * w_cell, 0.0).astype(np.float32)
        else:                 # the power law (models written before the table)
            rel = np.where(live, sq / np.sqrt((sq[live] ** 2).mean()) if live.any() else 1.0,
                           1.0) ** -beta
            norm = math.sqrt(((sq[live] ** 2) * rel[live] ** 2).sum()
                             / (sq[live] ** 2).sum()) if live.any() else 1.0
            self.cell_bias = (self.bias * rel / norm * w_cell).astype(np.float32)
        self.tau_d = get.num("tau_direction", 1, 1e15)
        self.row_drift = get.num("row_drift", 0, 10)
        self.col_drift = get.num("col_drift", 0, 10)
        self.tau_i = get.num("tau_importance", 1, 1e15)
        scale = raw.get("scale")
        if not isinstance(scale, dict):
            raise TraceError(f"{w}: scale: expected a mapping with knots and gamma")
        knots = scale.get("knots")
        try:
            k = np.array(knots, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise TraceError(f"{w}: scale.knots: expected a list of [iteration, sigma] "
                             f"pairs") from None
        if len(k) < 1 or not np.isfinite(k).all() or (k[:, 1] <= 0).any() \
                or (np.diff(k[:, 0]) <= 0).any():
            raise TraceError(f"{w}: scale.knots: expected increasing iterations with "
                             f"positive finite sigmas")
        self.knots_t, self.knots_log = k[:, 0], np.log(k[:, 1])
        self.gamma = _Getter(scale, f"{w}: scale").num("gamma", -10, 10)
        # the direction field changes every `block` iterations (τ/8: an eighth of a keyframe
        # interval, 11° of the interpolation) and is computed once per block
        self.block = int(max(16, min(512, self.tau_d // 8)))
        # importance drift: held over blocks of τ_importance / 8 iterations
        self.iblock = int(max(1, min(512, self.tau_i // 8)))
        self.row32, self.col32 = self.row.astype(np.float32), self.col.astype(np.float32)
        self._frames: dict[tuple[int, int], np.ndarray] = {}
        self._imp: dict[int, tuple[int, np.ndarray]] = {}        # tag -> (first block, rows)
        self._M: tuple[int, np.ndarray] | None = None

    def sigma(self, t: np.ndarray) -> np.ndarray:
        """σ(t): log-linear between knots, flat before the first, power law after the last."""
        return scale_curve(t, self.knots_t, self.knots_log, self.gamma)

    def _frame(self, seed: int, tag: int, j: int, size: int) -> np.ndarray:
        """Keyframe j of stream ``tag`` (float32; the last few kept per tag)."""
        key = (tag, j)
        if key not in self._frames:
            old = [k for k in self._frames if k[0] == tag and k[1] < j - 1]
            for k in old:
                del self._frames[k]
            self._frames[key] = normal(seed, self.index + (tag << 32), j, size)
        return self._frames[key]

    def _importance(self, seed: int, tag: int, t0: int, n: int, delta: float,
                    base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The drifting importance base · exp(δ · x(t)) of iterations t0 .. t0+n-1, held
        constant over blocks of ``iblock`` iterations (evaluated at each block's middle):
        (one row per block spanned, the row of each iteration). Every block's row is computed
        the same way (element by element) whichever chunk asks for it; rows are computed
        for up to _IMP_BLOCKS blocks at a time and kept for the next pieces."""
        first, last = t0 // self.iblock, (t0 + n - 1) // self.iblock
        which = ((t0 + np.arange(n)) // self.iblock - first).astype(np.int64)
        if not delta:
            return base[None, :], np.zeros(n, dtype=np.int64)
        b0, rows = self._imp.get(tag, (first, None))
        if rows is None or not (b0 <= first and last < b0 + len(rows)):
            size = base.shape[0]
            nb = max(last - first + 1, min(_IMP_BLOCKS, (1 << 18) // max(size, 1)))
            j, c, s = keyframe_weights((np.arange(first, first + nb) + 0.5) * self.iblock,
                                       self.tau_i)
            x = np.empty((nb, size))
            for jj in np.unique(j):
                sel = j == jj
                x[sel] = (c[sel, None] * self._frame(seed, tag, int(jj), size)
                          + s[sel, None] * self._frame(seed, tag, int(jj) + 1, size))
            b0, rows = first, (base * np.exp(delta * x)).astype(np.float32)
            self._imp[tag] = (b0, rows)
        return rows[first - b0:last - b0 + 1], which

    def _direction(self, seed: int, block: int) -> np.ndarray:
        """b_rc · m at the middle of direction block ``block`` (cached for the next piece)."""
        if self._M is None or self._M[0] != block:
            rows, cols = self.info.rows, self.info.cols
            j, c, s = keyframe_weights((block + 0.5) * self.block, self.tau_d)
            m = (np.float32(c) * self._frame(seed, _DIRECTION, int(j), rows * cols)
                 + np.float32(s) * self._frame(seed, _DIRECTION, int(j) + 1, rows * cols))
            self._M = (block, self.cell_bias * m.reshape(rows, cols))
        return self._M[1]

    def pieces(self, seed: int, t0: int, n: int) -> list[tuple]:
        """Generator arguments of iterations t0 .. t0+n-1: one piece per direction block
        spanned, the row and column factors computed for the whole span at once (every
        iteration's factors are its own, whatever the span) and cut into row slices."""
        rimp, rwhich = self._importance(seed, _ROW, t0, n, self.row_drift, self.row32)
        cimp, cwhich = self._importance(seed, _COL, t0, n, self.col_drift, self.col32)
        P = np.empty((n, self.info.rows), dtype=np.float32)
        Q = np.empty((n, self.info.cols), dtype=np.float32)
        U = P if self.loud is None else np.empty_like(P)
        # one call draws the row gates (× importance × σ(t)), the column gates (× importance)
        # and the loudness (U = P · λ): iid per iteration, from their own streams
        _fitted_factors(np.int64(seed), np.int64(t0), GATE_PROBS, np.int64(_GATE_GRID),
                        self.sigma(np.arange(t0, t0 + n)),
                        np.int64(self.index + (_ROW_GATE << 32)), self.row_gate,
                        self._slopes[0], self._steps[0], rimp, rwhich,
                        np.int64(self.index + (_COL_GATE << 32)), self.col_gate,
                        self._slopes[1], self._steps[1], cimp, cwhich,
                        np.int64(self.index + (_LOUD << 32)), *self._loud_args, P, U, Q)
        out = []
        t = t0
        while t < t0 + n:
            end = min(t0 + n, (t // self.block + 1) * self.block)
            M = self._direction(seed, t // self.block)
            a, b = t - t0, end - t0
            out.append((t, end - t, M, P[a:b], Q[a:b], U[a:b], Q[a:b], self.cell))
            t = end
        return out


class _Getter:
    def __init__(self, raw: dict, where: str):
        self.raw, self.where = raw, where

    def num(self, key: str, lo: float, hi: float) -> float:
        v = self.raw.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi \
                or not math.isfinite(v):
            raise TraceError(f"{self.where}: {key}: expected a number in [{lo:g}, {hi:g}], "
                             f"got {v!r}")
        return float(v)


def load_model(path: str | Path) -> tuple[dict, list[FittedLayer], str]:
    """Parse and check a fitted model; (document, layers, sha256 of YAML + importances)."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{where}: cannot read the fitted model ({exc.strerror})") from None
    try:
        # libyaml's loader where PyYAML has it: a model with hundreds of layers parses in
        # milliseconds, not tenths of a second (the same documents, the same errors)
        doc = yamlio.load(text, fast=True)
    except yamlio.DuplicateKeyError as exc:
        raise TraceError(f"{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise TraceError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TraceError(f"{where}: not a fitted model (expected format: {FORMAT}; made by "
                         f"'timesim trace fit')")
    if doc.get("version") != VERSION:
        raise TraceError(f"{where}: version {doc.get('version')!r}; this timesim reads "
                         f"version {VERSION}")
    side = path.parent / str(doc.get("importances", ""))
    if not side.is_file():
        raise TraceError(f"{where}: importances: {side} is missing (it is written beside the "
                         f"YAML by 'timesim trace fit')")
    blob = side.read_bytes()
    if hashlib.sha256(blob).hexdigest() != doc.get("importances_sha256"):
        raise TraceError(f"{where}: importances: {side.name} does not match this model "
                         f"(sha256 differs; refit or restore the pair)")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise TraceError(f"{where}: layers: expected a non-empty list")
    try:
        with np.load(side, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise TraceError(f"{where}: importances: {side.name} is not a readable .npz archive "
                         f"({type(exc).__name__}: a damaged or foreign file); refit with "
                         f"'timesim trace fit'") from None
    layers = []
    for i, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            raise TraceError(f"{where}: layers[{i}]: expected a mapping")
        name = (raw.get("layer") or {}).get("name") if isinstance(raw.get("layer"), dict) \
            else None
        if f"{name}/row" not in arrays or f"{name}/col" not in arrays:
            raise TraceError(f"{where}: layer {name}: no importances in {side.name}")
        gates = tuple(arrays.get(f"{name}/{axis}_gate", np.ones_like(GATE_PROBS))
                      for axis in ("row", "col"))
        layers.append(FittedLayer(i, raw, arrays[f"{name}/row"], arrays[f"{name}/col"], gates,
                                  where, arrays.get(f"{name}/cell"),
                                  arrays.get(f"{name}/loud_gate")))
    digest = hashlib.sha256(text.encode() + blob).hexdigest()
    return doc, layers, digest


class FittedTrace(SynthTrace):
    """``synth:fit?model=MODEL.yaml&iterations=N&seed=S``: the fitted workload, generated;
    or (``profile``) one of the paper's networks with the per-layer-kind parameters of a
    bundled profile (``synth:vgg16?profile=digits``)."""

    def __init__(self, model: str | None = None, iterations: int | None = None, seed: int = 0,
                 chunk: int | None = None, profile: str | None = None,
                 network: str | None = None):
        if profile is not None:
            doc, layers, digest = profile_model(network, profile, seed)
            where = f"synth:{network}"
        else:
            doc, layers, digest = load_model(model)
            where = "synth:fit"
        self.fitted = layers
        infos = tuple(layer.info for layer in layers)
        iterations = int(doc["source"]["iterations"]) if iterations is None else iterations
        biggest = max(layer.cells for layer in infos)
        if chunk is None:
            chunk = default_chunk(biggest)
        for key, value, lo, hi in (("iterations", iterations, 1, MAX_ITERATIONS),
                                   ("seed", seed, 0, 2**63 - 1), ("chunk", chunk, 1, 1 << 20)):
            if not lo <= value <= hi:
                raise TraceError(f"{where}: {key}: must be in [{lo}, {hi}], got {value}")
        self.seed, self.hammer, self.row = seed, False, 0
        if profile is not None:
            self.model = network
            self.params = dict(profile=profile, iterations=iterations, seed=seed, chunk=chunk)
        else:
            self.model = "fit"
            # the absolute path: the label must open the same model from any working directory
            self.params = dict(model=str(Path(model).resolve()), iterations=iterations,
                               seed=seed, chunk=chunk)
        self._shadow = None
        self.meta = TraceMeta(model=str(doc.get("model", "fit")),
                              source=f"timesim-fit sha256={digest} seed={seed}",
                              dataset=str(doc.get("dataset", "")),
                              batch_size=int(doc.get("batch_size", 128)),
                              iterations=iterations, chunk_iterations=chunk, dtype="float32",
                              layers=infos)
        self.index = {layer.name: i for i, layer in enumerate(infos)}
        self._structure, self._factors = {}, {}
        self._biggest = biggest
        import threading

        self._local = threading.local()

    def pieces(self, li: int, t0: int, n: int) -> list[tuple]:
        return self.fitted[li].pieces(self.seed, t0, n)


PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"


def profile_model(network: str, profile: str, seed: int) -> tuple[dict, list, str]:
    """A fitted model of one of the paper's networks from a bundled per-layer-kind profile:
    every layer takes its kind's parameters (conv2d or linear), lognormal row and column
    importances of the kind's spread with its fraction of dead rows and columns (drawn from
    ``seed``), the kind's gate tables, and a flat gradient scale (another network's training
    schedule is not the profile's)."""
    from .models import MODELS

    path = PROFILES / f"{profile}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise TraceError(f"synth:{network}: profile {profile!r} unknown; expected one of "
                         f"{', '.join(names)}")
    raw = yamlio.load(path.read_text())
    build, default_iterations, dataset = MODELS[network]
    layers, docs = [], []
    for i, info in enumerate(build()):
        kind = raw["kinds"].get(info.kind)
        if kind is None:
            raise TraceError(f"{path}: no parameters for layer kind {info.kind}")
        rng = np.random.default_rng([seed, i])
        row = np.exp(kind["row_sigma"] * rng.standard_normal(info.rows))
        col = np.exp(kind["col_sigma"] * rng.standard_normal(info.cols))
        row[rng.random(info.rows) < kind["dead_rows"]] = 0.0
        col[rng.random(info.cols) < kind["dead_cols"]] = 0.0
        d = {"layer": info.to_dict(), "bias": kind["bias"],
             "bias_exponent": kind["bias_exponent"], "tau_direction": kind["tau_direction"],
             "row_drift": kind["row_drift"], "col_drift": kind["col_drift"],
             "tau_importance": kind["tau_importance"],
             "bias_by_rms": kind.get("bias_by_rms", []),
             "scale": {"knots": [[0, 1.0]], "gamma": 0.0}}
        gates = (np.array(kind["row_gate"], dtype=np.float64),
                 np.array(kind["col_gate"], dtype=np.float64))
        loud = np.array(kind["loud_gate"], dtype=np.float64) if "loud_gate" in kind else None
        layers.append(FittedLayer(i, d, row.astype(np.float32), col.astype(np.float32), gates,
                                  str(path), loud=loud))
        docs.append(d)
    doc = {"model": network, "dataset": dataset, "batch_size": 128,
           "source": {"iterations": default_iterations}, "layers": docs}
    digest = hashlib.sha256(path.read_bytes() + f"{network}:{seed}".encode()).hexdigest()
    return doc, layers, digest

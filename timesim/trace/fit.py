"""Estimation (``timesim trace fit``): the model of trace/fitted.py fitted to a recorded trace.

``fit_trace`` streams the trace twice (memory: a few arrays per layer, whatever its length):
pass 1 measures each layer's scale σ(t) and per-cell power, from which come the row, column and
cell importances (a two-way fit of log RMS); pass 2 the window means (direction), the gates, the
loudness and the moments; then each layer's parameters are fitted (direction strength and
correlation time, importance drift, gate tempering, the bias table) into the YAML document and
arrays that ``fitted.write_model`` stores and ``fitted.load_model`` replays (docs/fidelity.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import TraceError
from ..kernels.convert import to_float32
from .fitted import (
    _EPS,
    FORMAT,
    GATE_PROBS,
    VERSION,
    gate_moments,
    keyframe_correlation,
    keyframe_weights,
    scale_curve,
)
from .loopfit import fit_loops

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
    from . import open_trace  # the package (which never imports this module)

    trace = open_trace(trace)
    meta = trace.meta
    plan = _plan(trace, windows, start)
    sigma, sq = _scale_pass(trace, plan, progress)
    imp = {layer.name: _importance(sq[layer.name] / plan.span) for layer in meta.layers}
    # the scale σ(t) as the model has it: knots of the smoothed recorded scale, then a power law
    scales = {name: _fit_scale(sig) for name, sig in sigma.items()}
    smooth = {name: scale_curve(np.arange(plan.K, dtype=np.float64), kt, np.log(ks), -slope)
              for name, (kt, ks, slope, _) in scales.items()}
    acc = _window_pass(trace, plan, sigma, smooth, imp, sq, progress)
    # the closed loop's input direction, response and persistence (trace/loopfit.py)
    loops = fit_loops(trace, plan, smooth, _slices)
    layers_doc, arrays = [], {}
    for layer in meta.layers:
        doc, arr = _fit_layer(layer, plan, imp[layer.name], acc[layer.name],
                              sq[layer.name] / plan.span, scales[layer.name])
        doc["loop"], arr[f"{layer.name}/loop_h"] = loops[layer.name]
        layers_doc.append(doc)
        arrays.update(arr)
    doc = {"format": FORMAT, "version": VERSION, "model": meta.model, "dataset": meta.dataset,
           "batch_size": meta.batch_size,
           "source": {"trace": str(getattr(trace, "path", "")), "iterations": plan.K,
                      "statistics_from": plan.t_first, "windows": plan.windows},
           "layers": layers_doc}
    if meta.updates:                    # how the recorded training applied its gradients
        doc["source"]["updates"] = meta.updates
    for key in ("skipped", "left_out"):     # what the recording did not map: a replay of the
        if getattr(meta, key):              # fit reports (and times) it as the trace's does
            doc[key] = [dict(d) for d in getattr(meta, key)]
    return doc, arrays


@dataclass(frozen=True)
class _Plan:
    """Which iterations the fit's statistics come from: ``windows`` windows of ``wlen``
    iterations from ``t_first`` (``used`` in all, of the ``span`` from ``t_first`` to the
    trace's end ``K``); ``n_vr`` the block length of the variance ratio."""
    K: int
    t_first: int
    span: int
    windows: int
    wlen: int
    used: int
    n_vr: int


def _plan(trace, windows: int, start: float) -> _Plan:
    """Check that the trace can be fitted and lay out its statistics' windows."""
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
    return _Plan(K, t_first, span, windows, wlen, used, n_vr)


def _slices(trace):
    """(iterations, layer, float64 gradients) in slices of at most ~8 M values (~64 MB), so
    memory stays bounded whatever the recorded chunk size."""
    meta = trace.meta
    for ch in trace.chunks():
        for layer in meta.layers:
            raw = np.asarray(ch.arrays[layer.name])
            step = max(1, (8 << 20) // layer.cells)
            for i in range(0, ch.n, step):
                part = to_float32(np.ascontiguousarray(raw[i:i + step]), meta.dtype)
                yield _Slice(ch.t0 + i, part.shape[0]), layer, np.asarray(part,
                                                                        dtype=np.float64)


def _scale_pass(trace, plan: _Plan, progress) -> tuple[dict, dict]:
    """Pass 1: each layer's per-iteration scale (RMS) and the per-cell sum of squares of the
    scale-normalised gradient over the statistics' iterations."""
    layers = trace.meta.layers
    sigma = {layer.name: np.zeros(plan.K) for layer in layers}
    sq = {layer.name: np.zeros((layer.rows, layer.cols)) for layer in layers}
    for ch, layer, g in _slices(trace):
        s = np.sqrt((g ** 2).reshape(ch.n, -1).mean(1))
        if not np.isfinite(s).all():
            raise TraceError(f"{layer.name}: non-finite gradients in iterations {ch.t0}.."
                             f"{ch.t0 + ch.n - 1}; fit a trace without them")
        sigma[layer.name][ch.t0:ch.t0 + ch.n] = s
        h = g / np.maximum(s, _EPS)[:, None, None]
        keep = ch.t0 + np.arange(ch.n) >= plan.t_first
        sq[layer.name] += (h[keep] ** 2).sum(0)
        if progress:
            progress(0.5 * (ch.t0 + ch.n) / plan.K)
    return sigma, sq


def _importance(ms: np.ndarray) -> tuple:
    """Row and column importances of a layer from its per-cell mean square ``ms``: a two-way
    fit of log RMS over the live cells; (s_r, q_c, dead rows, dead columns, the fit's R²,
    live cells, each cell's own noise scale, row mean squares, column mean squares)."""
    R = np.sqrt(ms)
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
    return (np.where(dead_r, 0.0, np.exp(a)), np.where(dead_c, 0.0, np.exp(b)),
            dead_r, dead_c, r2, live, cell)


def _new_stats(layer, windows: int) -> dict:
    """Pass 2's sums for one layer."""
    shape = (layer.rows, layer.cols)
    return dict(
        mean=np.zeros((windows,) + shape),
        # sums of u over blocks of n_vr iterations: the running sum, its value at the last
        # block boundary, Σ over complete blocks and cells of S², Σ of u²
        cum=np.zeros(shape), last=np.zeros(shape),
        s2=0.0, blocks=0, u2=0.0, u2c=np.zeros(shape),
        m2=0.0, count=0, h4=np.zeros(shape),
        u4=np.zeros(shape),
        row=np.zeros((2, windows, layer.rows)), col=np.zeros((2, windows, layer.cols)),
        gate={"row": np.zeros(_HIST_BINS), "col": np.zeros(_HIST_BINS),
              "loud": np.zeros(_HIST_BINS)},
        gate_zeros={"row": 0, "col": 0, "loud": 0})


def _window_pass(trace, plan: _Plan, sigma: dict, smooth: dict, imp: dict, sq: dict,
                 progress) -> dict:
    """Pass 2: window means of g / σ(t) (direction), noise moments, row/col window RMS,
    gates and loudness, per layer (``_new_stats``)."""
    layers = trace.meta.layers
    row_ms = {k: v.mean(1) / plan.span for k, v in sq.items()}
    col_ms = {k: v.mean(0) / plan.span for k, v in sq.items()}
    acc = {layer.name: _new_stats(layer, plan.windows) for layer in layers}
    for ch, layer, g in _slices(trace):
        name = layer.name
        if _accumulate(acc[name], plan, ch, g, sigma[name][ch.t0:ch.t0 + ch.n],
                       smooth[name][ch.t0:ch.t0 + ch.n], imp[name][5],
                       row_ms[name], col_ms[name]) and progress:
            progress(0.5 + 0.5 * (ch.t0 + ch.n) / plan.K)
    return acc


def _accumulate(a: dict, plan: _Plan, ch, g: np.ndarray, sig_raw: np.ndarray,
                smooth: np.ndarray, live: np.ndarray, row_ms: np.ndarray,
                col_ms: np.ndarray) -> bool:
    """Add one slice of a layer to its pass-2 sums; False when it holds none of the
    statistics' iterations."""
    wlen = plan.wlen
    sig = np.maximum(sig_raw, _EPS)
    h = g / sig[:, None, None]
    # the direction is measured on g / σ(t) with the *smoothed* σ the model multiplies
    # by: normalised per iteration, a gradient's mean changes meaning. Near a minimum
    # most batches push a weight one way and a few loud ones push it back, so that g
    # sums to ~0 (the weight stays put) while g / (its own iteration's scale) keeps the
    # quiet batches' push: a persistent direction that the real run does not have
    u = g / np.maximum(smooth, _EPS)[:, None, None]
    t = ch.t0 + np.arange(ch.n)
    inside = (t >= plan.t_first) & (t < plan.t_first + plan.used)
    if not inside.any():
        return False
    h, u, t = h[inside], u[inside], t[inside] - plan.t_first
    # the layer's loudness: each iteration's scale over the smoothed σ(t) (a loud batch
    # makes every cell of the layer loud at once)
    lam = sig[inside] / np.maximum(smooth[inside], _EPS)
    a["gate_zeros"]["loud"] += int((lam <= _EPS).sum())
    a["gate"]["loud"] += np.histogram(np.clip(np.log10(lam[lam > _EPS]), _HIST_LO,
                                              _HIST_HI - 1e-9), bins=_HIST_BINS,
                                      range=(_HIST_LO, _HIST_HI))[0]
    # gates: each row's (column's) per-iteration RMS over its RMS across the trace
    for axis, dim, ms_all in (("row", 2, row_ms), ("col", 1, col_ms)):
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
    _block_sums(a, u, t, plan.n_vr)
    return True


def _importance_drift(a: dict, plan: _Plan) -> dict[str, tuple[float, float, float]]:
    """(δ, τ_importance, RMSE) per axis: deviations of each window's log mean square of a row
    (column) from its mean over windows, measured apart on even and odd iterations: their
    covariance is the drift's, without the sampling noise (independent between the two)."""
    windows, wlen, used = plan.windows, plan.wlen, plan.used
    lags = np.arange(1, windows, dtype=float) * wlen
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
    return drift


def _fit_layer(layer, plan: _Plan, imp: tuple, a: dict, h2c: np.ndarray,
               scale: tuple) -> tuple[dict, dict[str, np.ndarray]]:
    """One layer's parameters from its importances, pass-2 sums, per-cell mean square
    ``h2c`` and scale fit: its YAML entry and its arrays."""
    name = layer.name
    windows, wlen, used, n_vr = plan.windows, plan.wlen, plan.used, plan.n_vr
    s_r, q_c, dead_r, dead_c, r2, live, cell = imp
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
    beta = _bias_exponent(mean_w, h2c, np.outer(s_r, q_c), live) if B else 0.0
    gates = {axis: gate_table(a["gate"][axis], a["gate_zeros"][axis])
             for axis in ("row", "col", "loud")}
    # each cell's kurtosis E[h⁴] / E[h²]², averaged with weights E[h²] (power)
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
    table = _bias_table(mean_w, a["u2c"] / used, np.sqrt(h2c), live, wlen,
                        tau_d, gain) if B else []
    drift = _importance_drift(a, plan)
    # the importances' RMS over time includes exp(2δ²) from the drift: take it out
    s_fit = s_r * math.exp(-drift["row"][0] ** 2)
    q_fit = q_c * math.exp(-drift["col"][0] ** 2)
    knots_t, knots_s, slope, r2_scale = scale
    doc = {
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
    }
    arrays = {f"{name}/row_gate": gates["row"].astype(np.float64),
              f"{name}/col_gate": gates["col"].astype(np.float64),
              f"{name}/loud_gate": gates["loud"].astype(np.float64),
              f"{name}/row": s_fit.astype(np.float32),
              f"{name}/cell": cell.astype(np.float32),
              f"{name}/col": q_fit.astype(np.float32)}
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



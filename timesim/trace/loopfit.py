"""The closed loop's parameters from a recording (``timesim trace fit``; docs/fidelity.md,
"The closed loop"): for each layer its input direction h, and the response κ and persistence ρ
of the state that the chip's writes drive (kernels/loop.py).

A recording of dense training holds the gradients' answer to dense writes: every iteration's
gradient g_t was applied (w −= lr·g_t), so along the layer's input direction h the projection
Y_t[c] = Σ_r h_r g_t[r, c] / σ(t) of a column follows the loop's own dynamics under dense
writes, an ARMA(1, 1)

    Y_t − φ·Y_{t−1} = y_t − ρ·y_{t−1},     φ = ρ − κ,

whose autocorrelation is r_k = r_1·φ^(k−1) with r_1 = (1 − φρ)(φ − ρ) / (1 + ρ² − 2φρ). The fit
takes h as the principal eigenvector of the recorded row covariance Σ_t Σ_c u_t[:, c] u_t[:, c]ᵀ
(u = g / σ(t), the statistics' iterations), the projection's pooled autocorrelation over lags
1–32, (r_1, φ) by least squares, then ρ from r_1 and φ, κ = ρ − φ. How well each is determined:
the same fit on the even and the odd columns and on the first and the second half of the
iterations (``loop.spread``), and the acf's fit error against its sampling error.

Two more streaming passes over the statistics' iterations (memory: rows² + iterations × cols
per layer).
"""

from __future__ import annotations

import math

import numpy as np

_LAGS = 32                      # autocorrelation lags fitted
_PHI = np.linspace(0.0, 0.98, 99)


def arma_r1(phi: float, rho: float) -> float:
    """Lag-1 autocorrelation of Y_t − φY_{t−1} = y_t − ρy_{t−1} (y white)."""
    return (1 - phi * rho) * (phi - rho) / max(1 + rho * rho - 2 * phi * rho, 1e-12)


def loop_params(r: np.ndarray) -> dict:
    """(φ, r_1) fitted to the autocorrelation r[0..K-1] (lags 1..K), then ρ and κ."""
    k = np.arange(len(r))
    best = None
    for phi in _PHI:
        basis = phi ** k
        r1 = float((r * basis).sum() / (basis * basis).sum())
        sse = float(((r - r1 * basis) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(phi), r1)
    sse, phi, r1 = best
    # r_1(ρ) falls from 0 at ρ = φ to −(1 − φ)/2 at ρ = 1: bisect (no reversion: κ = 0)
    if r1 >= 0:
        rho = phi
    elif r1 <= arma_r1(phi, 1.0):
        rho = 1.0
    else:
        lo, hi = phi, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if arma_r1(phi, mid) > r1:
                lo = mid
            else:
                hi = mid
        rho = 0.5 * (lo + hi)
    # what the kernels use: the answer to one write summed over the iterations after it,
    # κ/(1 − ρ), at most half the write (what the chip's own writes get back under every
    # policy: docs/fidelity.md, point 9): κ ≤ 1/2, ρ ≤ 1 − 2κ. Beyond it a state that a sparse
    # policy writes only every G iterations answers a write with up to κ·G times it, the next
    # write with more, and the loop runs away
    kappa_fit = rho - phi
    kappa = min(kappa_fit, 0.5)
    return {"phi": phi, "r1": r1, "rho_fit": rho, "kappa_fit": kappa_fit,
            "rho": max(0.0, min(rho, 1 - 2 * kappa)), "kappa": kappa,
            "rmse": math.sqrt(sse / len(r))}


def _acf(Y: np.ndarray, lags: int = _LAGS) -> np.ndarray:
    """Pooled autocorrelation (power-weighted over the columns) of Y (iterations × cols),
    each column's mean removed."""
    Y = Y - Y.mean(0)
    den = (Y * Y).sum()
    if den <= 0:
        return np.zeros(lags)
    n = Y.shape[0]
    return np.array([(Y[:n - k] * Y[k:]).sum() / den * n / (n - k) for k in range(1, lags + 1)])


MAX_COV_ROWS = 2048            # beyond: h from the rows' mean squares (no rows² matrix)
MAX_CELLS = 1 << 16            # the cell acf on at most this many cells (an even stride)


def fit_loops(trace, plan, smooth: dict, slices) -> dict[str, tuple[dict, np.ndarray]]:
    """Per layer: (the YAML ``loop`` entry, h). ``slices``: fit.py's ``_slices``. Memory per
    layer: rows² (rows ≤ MAX_COV_ROWS), 18 × min(cells, MAX_CELLS) and iterations × cols."""
    layers = trace.meta.layers
    first, end = plan.t_first, plan.t_first + plan.used
    full = {layer.name: layer.rows <= MAX_COV_ROWS for layer in layers}
    cov = {layer.name: np.zeros((layer.rows, layer.rows) if full[layer.name] else layer.rows)
           for layer in layers}
    means = {layer.name: np.zeros((layer.rows, layer.cols)) for layer in layers}
    for ch, layer, g in slices(trace):
        u = _inside(ch, g, smooth[layer.name], first, end)
        if u is not None:
            x = u.transpose(1, 0, 2).reshape(layer.rows, -1)
            cov[layer.name] += x @ x.T if full[layer.name] else (x * x).sum(1)
            means[layer.name] += u.sum(0)
    h = {}
    for layer in layers:
        C = cov[layer.name]
        if full[layer.name]:
            w, v = np.linalg.eigh(C)
            hv = v[:, -1] if w[-1] > 0 else np.zeros(layer.rows)
        else:           # the principal direction of inputs that are mostly of one sign
            hv = np.sqrt(C) / max(float(np.sqrt(C.sum())), 1e-300)
        h[layer.name] = hv if hv.sum() >= 0 else -hv
    Y = {layer.name: np.zeros((plan.used, layer.cols)) for layer in layers}
    power = {layer.name: 0.0 for layer in layers}
    cell = {layer.name: _CellAcf(means[layer.name] / max(plan.used, 1), h[layer.name])
            for layer in layers}
    for ch, layer, g in slices(trace):
        u = _inside(ch, g, smooth[layer.name], first, end)
        if u is not None:
            t = ch.t0 + np.arange(ch.n)
            t = t[(t >= first) & (t < end)] - first
            Y[layer.name][t] = np.einsum("r,nrc->nc", h[layer.name], u)
            power[layer.name] += float((u * u).sum())
            cell[layer.name].add(u, Y[layer.name][t])
    out = {}
    for layer in layers:
        explained = float((Y[layer.name] ** 2).sum() / max(power[layer.name], 1e-300))
        doc = _layer_doc(Y[layer.name], explained)
        doc["fit"]["direction"] = "eigenvector" if full[layer.name] else "row rms"
        doc.update(cell[layer.name].fit())
        out[layer.name] = (doc, h[layer.name].astype(np.float32))
    return out


class _CellAcf:
    """The per-cell response: the autocorrelation over lags 1–16, pooled over the cells
    (power-weighted), of what the column state leaves, u − h·(hᵀu), each cell's mean removed
    (streamed: a ring of the last 16 iterations; at most MAX_CELLS cells, an even stride)."""

    LAGS = 16

    def __init__(self, mean_u: np.ndarray, h: np.ndarray):
        rows, cols = mean_u.shape
        self.sel = np.arange(0, rows * cols, max(1, -(-rows * cols // MAX_CELLS)))
        self.hr = h[self.sel // cols]
        self.col = self.sel % cols
        self.mean = (mean_u - np.outer(h, h @ mean_u)).reshape(-1)[self.sel]
        self.ring = np.zeros((self.LAGS, self.sel.size))
        self.seen = 0
        self.lag = np.zeros(self.LAGS)
        self.pairs = np.zeros(self.LAGS)
        self.sq = 0.0

    def add(self, u: np.ndarray, Y: np.ndarray) -> None:
        flat = u.reshape(u.shape[0], -1)
        for ut, yt in zip(flat, Y):
            e = ut[self.sel] - self.hr * yt[self.col] - self.mean
            self.sq += float((e * e).sum())
            for k in range(1, min(self.LAGS, self.seen) + 1):
                self.lag[k - 1] += float((e * self.ring[(self.seen - k) % self.LAGS]).sum())
                self.pairs[k - 1] += 1
            self.ring[self.seen % self.LAGS] = e
            self.seen += 1

    def fit(self) -> dict:
        """κ_cell and ρ_cell: the column state's ARMA(1, 1) fit (``loop_params``) on the
        residual's autocorrelation."""
        if self.sq <= 0 or self.seen < 2 * self.LAGS:
            return {"kappa_cell": 0.0, "rho_cell": 0.0, "fit_cell": {"r": [], "acf_rmse": 0.0}}
        r = self.lag / np.maximum(self.pairs, 1) / (self.sq / self.seen)
        p = loop_params(r)
        return {"kappa_cell": round(p["kappa"], 4), "rho_cell": round(p["rho"], 4),
                "fit_cell": {"r": [round(float(x), 4) for x in r[:4]],
                             "rho_fit": round(p["rho_fit"], 4),
                             "kappa_fit": round(p["kappa_fit"], 4),
                             "acf_rmse": round(p["rmse"], 4)}}


def _inside(ch, g, smooth, first, end):
    t = ch.t0 + np.arange(ch.n)
    keep = (t >= first) & (t < end)
    if not keep.any():
        return None
    return g[keep] / np.maximum(smooth[t[keep]], 1e-30)[:, None, None]


def _layer_doc(Y: np.ndarray, explained: float) -> dict:
    """The loop's parameters of one layer and how well they are determined."""
    r = _acf(Y)
    p = loop_params(r)
    n, cols = Y.shape
    parts = [Y[:, 0::2], Y[:, 1::2], Y[:n // 2], Y[n // 2:]]
    sub = [loop_params(_acf(x)) for x in parts if x.shape[1] > 0 and x.shape[0] > 2 * _LAGS]
    # the acf's sampling error: ~1/√(iterations × columns) for independent columns
    se = 1.0 / math.sqrt(max(n * cols, 1))
    return {"kappa": round(p["kappa"], 4), "rho": round(p["rho"], 4),
            "fit": {"phi": round(p["phi"], 4), "r1": round(p["r1"], 4),
                    "rho_fit": round(p["rho_fit"], 4), "kappa_fit": round(p["kappa_fit"], 4),
                    "acf_rmse": round(p["rmse"], 4), "acf_se": round(se, 4),
                    "response_32": round(float(r.sum()), 4),
                    "explained": round(explained, 4),
                    "spread": {"kappa": [round(min(s["kappa"] for s in sub), 4),
                                         round(max(s["kappa"] for s in sub), 4)] if sub else [],
                               "rho": [round(min(s["rho"] for s in sub), 4),
                                       round(max(s["rho"] for s in sub), 4)] if sub else []}}}

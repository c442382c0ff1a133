"""The fitted workload, generated (``synth:fit?model=...``, ``synth:MODEL?profile=...``): the
model that ``timesim trace fit`` (trace/fit.py) estimates from a recorded trace, replayed beside
the hand-set workloads of trace/synth.py.

The model of one layer's gradient at iteration t (docs/fidelity.md):

    G_t[r, c] = σ(t) · s_r(t) · q_c(t) · (b · m_t[r, c] + z_t[r, c])

- σ(t): the layer's gradient scale over training: the recorded trace's (smoothed) scale inside
  the recorded iterations, a power law fitted to its second half beyond them;
- s_r(t) = s_r · exp(δ_row · x_r(t)), q_c(t) = q_c · exp(δ_col · x_c(t)): row and column
  importance, persistent (s, q: the trace's own, from a two-way fit of log per-cell RMS; rows
  or columns that never get a gradient, such as dead ReLUs or blank border pixels, stay 0) with
  a drifting part x of unit variance and correlation time τ_importance;
- m_t: a unit-normal direction field of correlation time τ_direction, b its strength against
  the fresh noise z (kernels/generate.py).

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
import threading
import zipfile
from pathlib import Path

import numpy as np
import yaml

from .. import yamlio
from ..errors import TraceError
from ..kernels.synth import _fitted_factors, normal
from .format import MAX_ITERATIONS, UPDATES, TraceMeta, _entries, _layer
from .models import MODELS
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


class FittedLayer:
    """One layer's parameters and the generator arguments of its pieces."""

    def __init__(self, index: int, raw: dict, row: np.ndarray, col: np.ndarray,
                 gates: tuple[np.ndarray, np.ndarray], where: str,
                 cell: np.ndarray | None = None, loud: np.ndarray | None = None,
                 loop_h: np.ndarray | None = None):
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
        self.loop = _loop_params(raw.get("loop"), loop_h, self.info.rows, w)
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


def _loop_params(raw, h: np.ndarray | None, rows: int, where: str):
    """The closed loop's (h, ρ, κ, κ_cell, ρ_cell) of a layer (kernels/loop.py), or None
    when the model has none (fitted before the loop)."""
    if raw is None and h is None:
        return None
    if not isinstance(raw, dict) or h is None:
        raise TraceError(f"{where}: loop: expected a mapping with kappa and rho and loop_h in "
                         f"the arrays (refit with 'timesim trace fit')")
    get = _Getter(raw, f"{where}: loop")
    rho, kappa = get.num("rho", 0, 1), get.num("kappa", 0, 2)
    kc = get.num("kappa_cell", 0, 2) if "kappa_cell" in raw else 0.0
    rc = get.num("rho_cell", 0, 1) if "rho_cell" in raw else 0.0
    if h.shape != (rows,) or not np.isfinite(h).all():
        raise TraceError(f"{where}: loop_h: expected {rows} finite values")
    return (h.astype(np.float32), np.float32(rho), np.float32(kappa), np.float32(kc),
            np.float32(rc))


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
    source = doc.get("source")
    if not isinstance(source, dict):
        raise TraceError(f"{where}: source: expected a mapping (trace, iterations, ...), got "
                         f"{source!r}")
    if (source.get("updates") or "") not in ("", *UPDATES):
        raise TraceError(f"{where}: source.updates: must be one of {'|'.join(UPDATES)} (how "
                         f"the recorded training applied its gradients), got "
                         f"{source.get('updates')!r}")
    # the recording's unmapped modules and untimed attention work, as in its manifest
    doc["skipped"] = list(_entries(doc, "skipped", {"name", "reason"}, {"parameters"}, where))
    doc["left_out"] = list(_entries(doc, "left_out", {"name", "work", "layer"}, {"macs"},
                                    where))
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
                                  arrays.get(f"{name}/loud_gate"),
                                  arrays.get(f"{name}/loop_h")))
    digest = hashlib.sha256(text.encode() + blob).hexdigest()
    return doc, layers, digest


class FittedTrace(SynthTrace):
    """``synth:fit?model=MODEL.yaml&iterations=N&seed=S``: the fitted workload, generated;
    or (``profile``) one of the paper's networks with the per-layer-kind parameters of a
    bundled profile (``synth:vgg16?profile=digits``)."""

    def __init__(self, model: str | None = None, iterations: int | None = None, seed: int = 0,
                 chunk: int | None = None, profile: str | None = None,
                 network: str | None = None, loop: str = "off"):
        if profile is not None:
            doc, layers, digest = profile_model(network, profile, seed)
            where = f"synth:{network}"
        else:
            doc, layers, digest = load_model(model)
            where = "synth:fit"
        self.fitted = layers
        if loop not in ("on", "off"):
            raise TraceError(f"{where}: loop: expected on or off, got {loop!r}")
        if loop == "on" and any(layer.loop is None for layer in layers):
            raise TraceError(f"{where}: loop=on: the model has no closed-loop parameters "
                             f"(fitted before the loop, or a profile): refit it with "
                             f"'timesim trace fit'")
        self.loop = loop == "on"
        infos = tuple(layer.info for layer in layers)
        if iterations is None:
            try:
                iterations = int(doc["source"]["iterations"])
            except (KeyError, TypeError, ValueError):
                raise TraceError(f"{where}: source.iterations: missing or not a number; give "
                                 f"iterations=N") from None
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
            if self.loop:           # the label of an open-loop run stays what it was
                self.params["loop"] = "on"
        self._shadow = None
        self.meta = TraceMeta(model=str(doc.get("model", "fit")),
                              source=f"timesim-fit sha256={digest} seed={seed}",
                              dataset=str(doc.get("dataset", "")),
                              batch_size=int(doc.get("batch_size", 128)),
                              iterations=iterations, chunk_iterations=chunk, dtype="float32",
                              layers=infos,
                              updates=(doc.get("source") or {}).get("updates") or "",
                              skipped=tuple(doc.get("skipped", ())),
                              left_out=tuple(doc.get("left_out", ())))
        self.index = {layer.name: i for i, layer in enumerate(infos)}
        self._structure, self._factors = {}, {}
        self._biggest = biggest
        self._local = threading.local()

    def pieces(self, li: int, t0: int, n: int) -> list[tuple]:
        return self.fitted[li].pieces(self.seed, t0, n)

    def generate(self, li: int, t0: int, n: int) -> np.ndarray:
        if self.loop:
            raise TraceError("synth:fit: loop=on is a function of the run (the chip's own "
                             "writes feed back), simulated inside the policy kernels only; it "
                             "cannot be written out or simulated unfused (use loop=off)")
        return super().generate(li, t0, n)

    def source(self, li: int, t0: int, n: int):
        """(seed, layer, pieces) for the fused kernels, and with ``loop=on`` the layer's
        closed-loop parameters (h, ρ, κ, κ_cell, ρ_cell) (kernels/loop.py)."""
        src = (self.seed, li, self.pieces(li, t0, n))
        return src + (self.fitted[li].loop,) if self.loop else src


PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"


def profile_model(network: str, profile: str, seed: int) -> tuple[dict, list, str]:
    """A fitted model of one of the paper's networks from a bundled per-layer-kind profile:
    every layer takes its kind's parameters (conv2d or linear), lognormal row and column
    importances of the kind's spread with its fraction of dead rows and columns (drawn from
    ``seed``), the kind's gate tables, and a flat gradient scale (another network's training
    schedule is not the profile's)."""
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


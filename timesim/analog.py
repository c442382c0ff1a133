"""What the crossbars compute: y = f(x, W) through DACs, conductances and ADCs, with faults.

Public: ``mvm(x, w, hw, stuck=None, seed=0)`` (DESIGN §8), ``program`` (map weights once, then
``.mvm`` many inputs), ``wearout_faults`` (writes -> stuck cells), ``evaluate_model`` (a small
MLP on faulted crossbars). The model, step by step (docs/analog.md):

1. weights: w_scale = max|W| / (2^wb − 1); q = rint(W / w_scale) with wb = ``xbar.weight_bits``
   magnitude bits. A differential pair stores max(q, 0) on G+ and max(−q, 0) on G−; an offset
   column stores q + 2^wb (digitally corrected). Magnitudes are sliced into ``xbar.cell_bits``
   cells, least significant first; cell level l ∈ [0, 2^cb − 1] has G = Gmin + l·ΔG between
   Gmin = 1/r_off and Gmax = 1/r_on.
2. programming variation: G ← clip(G·(1 + program_sigma·z), Gmin, Gmax), z ~ N(0, 1) seeded;
   stuck cells: SA0 → Gmin, SA1 → Gmax for every cell of the weight.
3. inputs: per input vector, x_scale = max|x| / (2^ib − 1), magnitudes rint(|x| / x_scale) in
   ``dac.input_bits`` bits, fed in slices of ``dac.bits`` bits (bit-serial, least significant
   first); the sign sets the voltage polarity.
4. each (row block, input slice, weight slice) gives column currents, sensed differentially
   (G+ − G−, or G − Gmin against a reference column); read noise adds
   ``adc.read_noise`` × full scale (seeded); the ADC (``adc.bits``, bipolar, full scale =
   ``adc.range`` × the largest possible current of a ``xbar.rows``-row tile) rounds and clips.
5. digital shift-and-add of the codes over slices and row blocks, offset correction, rescale.

Currents are computed in integer units of ΔV·ΔG, so without programming variation the result is
independent of the summation order, and a plain numpy implementation reproduces it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import HwConfig
from .errors import SimulationError
from .kernels.mvm import _adc_accumulate, _input_scales, _input_slice, _stream_key
from .mapping import weight_slices

OK, SA0, SA1 = 0, 1, 2


@dataclass
class Programmed:
    """A weight matrix programmed onto crossbars: per row block, per weight slice, the
    conductance in units of ΔG (differential: G+ − G−; offset column: G − Gmin)."""

    hw: HwConfig
    rows: int
    cols: int
    w_scale: float
    units: list[np.ndarray]          # per row block: (block rows, slices·cols) float32
    offset: int                      # 2^wb for an offset column, else 0

    @property
    def slices(self) -> int:
        return self.units[0].shape[1] // self.cols

    def mvm(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        """y (batch, cols) float32 for inputs x (batch, rows)."""
        hw = self.hw
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.rows:
            raise SimulationError(f"mvm: x must be (batch, {self.rows}), got {x.shape}")
        if not np.isfinite(x).all():
            raise SimulationError("mvm: x has NaN or Inf values")
        B = x.shape[0]
        ib, db = hw.dac.input_bits, hw.dac.bits
        n_in = math.ceil(ib / db)
        x_scale32 = np.empty(B, dtype=np.float32)
        _input_scales(x, np.float32(2**ib - 1), x_scale32)
        L1 = 2**hw.xbar.cell_bits - 1
        X = hw.xbar.rows
        full = X * (2**db - 1) * L1 * hw.adc.range
        levels = 2 ** (hw.adc.bits - 1) - 1
        step = full / levels
        sigma = hw.adc.read_noise * full
        cb = hw.xbar.cell_bits
        S = self.slices
        acc = np.zeros((B, self.cols), dtype=np.float64)
        vsum = np.zeros(B, dtype=np.float64)            # Σ_k 2^(db·k) Σ_r v (offset column)
        cur = np.empty((B, S * self.cols), dtype=np.float32)
        v = np.empty((B, self.rows), dtype=np.float32)
        stream = 0
        for k in range(n_in):
            _input_slice(x, x_scale32, db * k, 2**db - 1, v)
            if self.offset:
                vsum += float(2 ** (db * k)) * v.sum(axis=1, dtype=np.float64)
            for b, u in enumerate(self.units):
                r0 = b * X
                np.matmul(v[:, r0:r0 + u.shape[0]], u, out=cur)
                key = np.uint64(_stream_key(np.int64(seed), np.int64(stream)))
                stream += 1
                for s in range(S):
                    _adc_accumulate(cur, s * self.cols, self.cols, key, sigma, step, levels,
                                    float(2 ** (db * k + cb * s)), acc)
        x_scale = x_scale32.astype(np.float64)
        y = acc * step
        if self.offset:
            y -= self.offset * vsum[:, None]
        return (y * x_scale[:, None] * self.w_scale).astype(np.float32)


def program(w: np.ndarray, hw: HwConfig, stuck: np.ndarray | None = None,
            seed: int = 0) -> Programmed:
    """Map ``w`` (rows, cols) onto conductances (with variation and stuck cells)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or w.size == 0:
        raise SimulationError(f"mvm: w must be a non-empty (rows, cols) matrix, got {w.shape}")
    if not np.isfinite(w).all():
        raise SimulationError("mvm: w has NaN or Inf values")
    rows, cols = w.shape
    x = hw.xbar
    wb, cb = x.weight_bits, x.cell_bits
    L1 = 2**cb - 1
    S = weight_slices(hw)
    wmax = float(np.abs(w).max()) or 1.0
    w_scale = wmax / (2**wb - 1)
    q = np.rint(w.astype(np.float64) / w_scale).astype(np.int64)
    diff = x.cells_per_weight == 2
    offset = 0 if diff else 2**wb
    sides = [np.maximum(q, 0), np.maximum(-q, 0)] if diff else [q + offset]
    gmin, gmax = 1.0 / x.r_off_ohm, 1.0 / x.r_on_ohm
    g0 = gmin / ((gmax - gmin) / L1)            # Gmin in units of ΔG
    if stuck is not None:
        stuck = np.asarray(stuck)
        if stuck.shape != w.shape or not np.isin(stuck, (OK, SA0, SA1)).all():
            raise SimulationError(f"mvm: stuck must be int8 {w.shape} of 0 (ok), 1 (SA0), "
                                  f"2 (SA1)")
    rng = np.random.default_rng([seed, 0x5EED]) if x.program_sigma > 0 else None
    units = np.zeros((rows, S * cols), dtype=np.float64)
    for side, mag in enumerate(sides):
        sgn = 1.0 if side == 0 else -1.0
        for s in range(S):
            level = ((mag >> (cb * s)) & L1).astype(np.float64)
            if rng is not None:
                g = (g0 + level) * (1.0 + x.program_sigma * rng.standard_normal(level.shape))
                level = np.clip(g, g0, g0 + L1) - g0
            if stuck is not None:
                level = np.where(stuck == SA0, 0.0, np.where(stuck == SA1, float(L1), level))
            units[:, s * cols:(s + 1) * cols] += sgn * level
    X = x.rows
    blocks = [np.ascontiguousarray(units[r0:r0 + X], dtype=np.float32) for r0 in range(0, rows, X)]
    return Programmed(hw=hw, rows=rows, cols=cols, w_scale=w_scale, units=blocks, offset=offset)


def mvm(x: np.ndarray, w: np.ndarray, hw: HwConfig, stuck: np.ndarray | None = None,
        seed: int = 0) -> np.ndarray:
    """y = x @ w as the crossbars compute it: x (batch, rows), w (rows, cols), float32;
    stuck: int8 (rows, cols), 0 ok, 1 SA0, 2 SA1. ``seed`` seeds variation and read noise."""
    return program(w, hw, stuck, seed).mvm(x, seed)


def wearout_faults(writes: np.ndarray, endurance: np.ndarray | float, rowmap: np.ndarray,
                   sa1_fraction: float, seed: int, layer: int) -> np.ndarray:
    """Stuck mask in logical (matrix) order: a cell whose writes exceed its endurance is stuck,
    SA1 with probability ``sa1_fraction`` (seeded per layer), else SA0."""
    failed_phys = writes > endurance
    draw = np.random.default_rng([seed, layer, 0xFA17]).random(writes.shape) < sa1_fraction
    stuck_phys = np.where(failed_phys, np.where(draw, SA1, SA0), OK).astype(np.int8)
    return stuck_phys[np.asarray(rowmap)]          # logical row r sits on physical rowmap[r]


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    den = float(np.linalg.norm(ref))
    return float(np.linalg.norm(y - ref)) / den if den > 0 else 0.0


def layer_probe(rows: int, cols: int, seed: int, batch: int = 64):
    """Seeded random weights (N(0, 1/rows)) and non-negative inputs (ReLU of N(0, 1)) for
    measuring a layer's MVM error when its real weights are not in the trace."""
    rng = np.random.default_rng([seed, rows, cols])
    w = (rng.standard_normal((rows, cols)) / math.sqrt(rows)).astype(np.float32)
    x = np.maximum(rng.standard_normal((batch, rows)), 0).astype(np.float32)
    return x, w


def evaluate_model(layers: Sequence[tuple[np.ndarray, np.ndarray | None]], x: np.ndarray,
                   hw: HwConfig, stuck: Sequence[np.ndarray | None] | None = None,
                   seed: int = 0) -> np.ndarray:
    """A small MLP on (faulted) crossbars: each layer (W (rows, cols), bias or None) through
    ``mvm``, ReLU between layers, biases digital. Returns the last layer's outputs."""
    h = np.asarray(x, dtype=np.float32)
    for i, (w, b) in enumerate(layers):
        st = stuck[i] if stuck is not None else None
        h = mvm(h, w, hw, st, seed + i)
        if b is not None:
            h = h + np.asarray(b, dtype=np.float32)
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h

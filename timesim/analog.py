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
   ``adc.read_noise`` × the largest possible current of a ``xbar.rows``-row column (absolute:
   it does not shrink with the range; seeded); the ADC (``adc.bits``, bipolar) rounds and clips
   at ± its full scale: ``adc.range`` × that largest current, or with ``adc.range: auto`` a full
   scale per (input slice, weight slice) calibrated on the partial sums of calibration inputs
   (``calibrate_steps``: the clip that minimizes the mean squared conversion error).
5. digital shift-and-add of the codes over slices and row blocks, offset correction, rescale.

Currents are computed in integer units of ΔV·ΔG, so without programming variation the result is
independent of the summation order, and a plain numpy implementation reproduces it exactly.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np

from .config import HwConfig
from .errors import SimulationError
from .kernels.blas import sgemm_handle
from .kernels.mvm import _adc_accumulate, _mvm_run, _quantize_inputs, _stream_key, tiles
from .lifetime import physical_cell_endurance
from .mapping import cells_per_weight, weight_slices

OK, SA0, SA1 = 0, 1, 2


@dataclass(frozen=True)
class Wear:
    """The state of every physical cell of a layer (logical row order): ``stuck`` (cells per
    weight, rows, cols) int8, 0 working, 1 stuck at Gmin (SA0), 2 stuck at Gmax (SA1); with
    ``endurance.mode: gradual``, ``window`` (2, cells, rows, cols) float: the lowest and
    highest conductance a working cell still reaches, in ΔG units above Gmin (its fresh
    window is [0, 2^cell_bits − 1]). Cell c of a weight: side c // slices (G+ then G− of a
    differential pair; one side for an offset column), bit slice c % slices (least
    significant first)."""

    stuck: np.ndarray
    window: np.ndarray | None = None

    @property
    def failed_fraction(self) -> float:
        return float((self.stuck != OK).mean())


def cell_wear(writes: np.ndarray, hw: HwConfig, layer: int, rowmap: np.ndarray | None = None,
              scale: float = 1.0) -> Wear:
    """Faults of every physical cell from a layer's write counts (physical row order).

    Every cell of a written weight is programmed (the write and energy model's assumption: a
    weight update rewrites its whole bit-sliced pair), so each cell has the weight's write
    count (× ``scale``: to look at an earlier or later point of the same run). Each cell has its
    own endurance (lognormal per cell when ``endurance.sigma`` > 0, drawn from (seed, layer,
    cell)) and its own stuck value: SA1 with probability ``endurance.sa1_fraction``, else SA0
    (drawn from (seed, layer, cell, 0xFA17)). So the two cells of a pair fail apart: a stuck G+
    at Gmax with a working G− pins the weight near +max. ``endurance.mode: gradual``: before it
    fails, a cell past ``gradual_onset`` × its endurance E has its window narrowed with the
    power law of Lammie et al. (2021): R_on(x) = r_on·(x/x₀)^a, R_off(x) = r_off·(x/x₀)^(−b),
    x₀ = onset·E, the exponents such that both reach R_c = (r_on + r_off)/2 at x = E."""
    e, xb = hw.endurance, hw.xbar
    sides, S = cells_per_weight(hw)
    C = sides * S
    w = np.asarray(writes, dtype=np.float64) * scale
    if rowmap is not None:
        w = w[np.asarray(rowmap)]                  # logical row r sits on physical rowmap[r]
    shape = (C,) + w.shape
    end = physical_cell_endurance(e, layer, shape)
    failed = w[None] > end
    sa1 = np.random.default_rng([e.seed, layer, 0xFA17]).random(shape) < e.sa1_fraction
    stuck = np.where(failed, np.where(sa1, SA1, SA0), OK).astype(np.int8)
    window = None
    if e.mode == "gradual":
        L1 = 2**xb.cell_bits - 1
        gmin, gmax = 1.0 / xb.r_off_ohm, 1.0 / xb.r_on_ohm
        dg = (gmax - gmin) / L1
        rc = (xb.r_on_ohm + xb.r_off_ohm) / 2
        x0 = e.gradual_onset * end
        span = np.log(np.maximum(end / x0, 1.0 + 1e-12))
        t = np.clip(np.log(np.maximum(w[None] / x0, 1.0)) / span, 0.0, 1.0)   # 0 .. 1 at E
        r_on = xb.r_on_ohm * (rc / xb.r_on_ohm) ** t
        r_off = xb.r_off_ohm * (rc / xb.r_off_ohm) ** t
        window = np.stack([(1.0 / r_off - gmin) / dg, (1.0 / r_on - gmin) / dg])
    return Wear(stuck=stuck, window=window)


@dataclass
class Programmed:
    """A weight matrix programmed onto crossbars: U holds the conductance of every cell in
    units of ΔG (differential: G+ − G−; offset column: G − Gmin), laid out per column chunk
    (matrix columns edges[i] .. edges[i+1] at U columns S·edges[i] .. S·edges[i+1], the S
    weight slices side by side), so that each chunk is one contiguous block of U's columns."""

    hw: HwConfig
    rows: int
    cols: int
    slices: int
    w_scale: float
    offset: int                          # 2^wb for an offset column, else 0
    edges: np.ndarray                    # column chunk boundaries, int64
    U: np.ndarray                        # (rows, slices · cols) float32
    steps: np.ndarray                    # (input slices, weight slices) ADC step, level units
    blocks: int = field(init=False)      # row blocks of xbar.rows rows, the last one shorter
    n_in: int = field(init=False)        # input (DAC) slices
    pack: int = field(init=False)        # input slices per float64 product (1: sgemm each)
    pack_base: float = field(init=False)

    def __post_init__(self):
        hw = self.hw
        X, db, cb = hw.xbar.rows, hw.dac.bits, hw.xbar.cell_bits
        self.blocks = -(-self.rows // X)
        self.n_in = -(-hw.dac.input_bits // db)                 # input slices
        full = full_scale(hw)
        levels = 2 ** (hw.adc.bits - 1) - 1
        steps = np.asarray(self.steps, dtype=np.float64)
        # each code weighs its significance times its ADC step (exact: powers of two)
        weights = np.array([[2.0 ** (db * k + cb * s) * steps[k, s]
                             for s in range(self.slices)] for k in range(self.n_in)])
        # the sums of codes over row blocks: float32 while exact in it
        tproto = np.empty(0, np.float32 if self.blocks * levels < 2**24 else np.float64)
        self.pack, self.pack_base = _packing(hw, self.n_in, self.U)
        # _mvm_run's arguments after (x, ..., seed), and the work of one input row
        self._args = (self.n_in, db, np.float32(2**hw.dac.input_bits - 1),
                      hw.adc.read_noise > 0,
                      (hw.adc.read_noise * full / steps).astype(np.float32),
                      (1.0 / steps).astype(np.float32), np.float32(levels), weights, tproto,
                      1.0, self.offset, float(self.w_scale))
        self._row_work = self.rows * self.cols * self.slices * self.n_in

    @property
    def adc_full_scale(self) -> np.ndarray:
        """Each (input slice, weight slice) ADC's full scale as a fraction of the largest
        possible column current (what ``adc.range`` sets by hand)."""
        levels = 2 ** (self.hw.adc.bits - 1) - 1
        return self.steps * levels / full_scale(self.hw)

    def mvm(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        """y (batch, cols) float32 for inputs x (batch, rows); y (cols,) for one vector x
        (rows,), as x @ W."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1 and x.shape[0] == self.rows:
            return self.mvm(x[None, :], seed)[0]
        if x.ndim != 2 or x.shape[1] != self.rows:
            raise SimulationError(f"mvm: x must be (batch, {self.rows}), got {x.shape}")
        B = x.shape[0]
        y = np.empty((B, self.cols), dtype=np.float32)
        if B == 0:
            return y
        seed = np.uint64(int(seed) % 2**64)                     # any integer, as the noise key
        blas = sgemm_handle()
        if blas is None:
            ok = _mvm_numpy(x, self, seed, y)
        else:
            small = B * self._row_work < _PARALLEL_WORK or tiles(B, self.edges) == 1
            threads = numba.get_num_threads() if small else 1
            with blas.single_threaded():
                if small:
                    numba.set_num_threads(1)
                pack = self.pack if blas.dgemm else 1
                try:
                    ok = _launch(blas.address, blas.dgemm, blas.ilp64, x, self.U,
                                 self.hw.xbar.rows, self.edges, self.slices, seed, pack,
                                 self.pack_base, *self._args, y)
                finally:
                    if small:
                        numba.set_num_threads(threads)
        if not ok:
            raise SimulationError("mvm: x has NaN or Inf values")
        return y


# Below this many multiply-adds an MVM runs on one thread (waking threads costs more than it
# saves); the result is the same either way.
_PARALLEL_WORK = 1 << 22
_CHUNK_COLS = 128
_launch_lock = threading.Lock()
_concurrent_ok: bool | None = None


def _launch(*args) -> bool:
    """_mvm_run, one launch at a time unless numba's threading layer takes concurrent launches
    from several Python threads (OpenMP and TBB do; the workqueue fallback, used where neither
    library is installed, aborts the process). The layer is known after the first launch."""
    global _concurrent_ok
    if _concurrent_ok:
        return _mvm_run(*args)
    with _launch_lock:
        ok = _mvm_run(*args)
        if _concurrent_ok is None:
            _concurrent_ok = numba.threading_layer() != "workqueue"
    return ok


def _mvm_numpy(x, p: Programmed, seed: int, y: np.ndarray) -> bool:
    """kernels/mvm.py's _mvm_run with np.matmul, for a BLAS that kernels/blas.py cannot call."""
    n_in, db, top, noisy, noise_code, inv_step, levels, weights, tproto, step, offset, \
        w_scale = p._args
    B, rows = x.shape
    X, S, U, edges = p.hw.xbar.rows, p.slices, p.U, p.edges
    v = np.empty((n_in, B, rows), dtype=np.float32)
    x_scale = np.empty(B, dtype=np.float32)
    vsum = np.empty(B, dtype=np.int64)
    if not _quantize_inputs(x, top, db, v, x_scale, vsum):
        return False
    keys = np.array([_stream_key(seed, i) for i in range(n_in * p.blocks)], dtype=np.uint64)
    fin = (step, offset, vsum, x_scale, w_scale, y)
    none = np.empty(0, np.float32)
    unpack = (False, np.empty((0, 0, 0)), 1.0, 0.0, 1.0, none, none)
    for i in range(len(edges) - 1):
        c0, c1 = int(edges[i]), int(edges[i + 1])
        cur = np.empty((p.blocks, B, S * (c1 - c0)), dtype=np.float32)
        acc = np.empty((B, c1 - c0), dtype=np.float64)
        t = np.empty((2, S * (c1 - c0)), dtype=tproto.dtype)
        for k in range(n_in):
            for b in range(p.blocks):
                r0 = b * X
                np.matmul(v[k, :, r0:r0 + X], U[r0:r0 + X, S * c0:S * c1], out=cur[b])
            _adc_accumulate(cur, keys[k * p.blocks:(k + 1) * p.blocks], U.shape[1], 0, c0,
                           noisy, noise_code[k], inv_step[k], levels, weights[k], acc, t[0],
                           t[1], k == 0, k == n_in - 1, fin, unpack)
    return True


def _packing(hw: HwConfig, n_in: int, U: np.ndarray) -> tuple[int, float]:
    """How many input slices one float64 product carries (kernels/mvm.py::_mvm_tile), and
    the base they are packed in: a power of two above twice the largest column current F, so
    each slice's currents (|c| <= F) are recovered exactly, and as many slices P as keep every
    partial sum, F·(1 + base + ... + base^(P−1)), under 2^53. Only for integer conductances
    (no programming variation, no worn windows: sums of them are exact in any order) and
    P >= 4: dgemm does about half sgemm's multiply-adds per cycle, so P slices save at most a
    factor P/2 before unpacking; measured (512×512, batch 128) P = 4 takes 0.7× the time of
    sgemm per slice, P = 3 (8-bit cells) 1.4–1.7×."""
    full = int(full_scale(hw))
    base = 2 ** (2 * full).bit_length()
    P = 1
    while P < n_in and full * sum(base**i for i in range(P + 1)) < 2**53:
        P += 1
    if P < 4 or not np.array_equal(U, np.rint(U)):
        return 1, float(base)
    return P, float(base)


def _chunk_edges(cols: int) -> np.ndarray:
    """Column chunks of at most _CHUNK_COLS columns, as even as possible: a fixed rule, so
    results never depend on the number of threads."""
    n = -(-cols // _CHUNK_COLS)
    return np.array([cols * i // n for i in range(n + 1)], dtype=np.int64)


def full_scale(hw: HwConfig) -> float:
    """The largest possible column current of one row block, in level units (ΔV·ΔG)."""
    x = hw.xbar
    return float(x.rows * (2**hw.dac.bits - 1) * (2**x.cell_bits - 1))


def input_digits(x: np.ndarray, hw: HwConfig) -> np.ndarray:
    """The DAC's view of inputs x (batch, rows): signed digits (input slices, batch, rows) of
    the magnitudes quantized per vector over their range (as the kernel does it)."""
    ib, db = hw.dac.input_bits, hw.dac.bits
    x = np.asarray(x, np.float32)
    top = np.abs(x).max(axis=1)
    top[top == 0] = 1.0
    inv = (np.float32(2**ib - 1) / top).astype(np.float32)
    mag = np.rint(np.abs(x) * inv[:, None]).astype(np.int64)
    sgn = np.where(x >= 0, 1, -1)
    n_in = -(-ib // db)
    return np.stack([((mag >> (db * k)) & (2**db - 1)) * sgn for k in range(n_in)])


CALIBRATION_ROWS = 64          # calibration input vectors used (the first ones)
CALIBRATION_COLS = 256         # matrix columns sampled (seeded) for the partial sums


def calibrate_steps(units: np.ndarray, cols: int, hw: HwConfig, x: np.ndarray | None,
                    seed: int = 0) -> np.ndarray:
    """``adc.range: auto``: per (input slice k, weight slice s), the ADC step whose clip
    minimizes the mean squared error of converting the partial sums (column currents of every
    row block) that calibration inputs ``x`` give; x None: the input model x ~ U(0, 1) (every
    input bit 1 with probability 1/2: the widest sums a per-vector-scaled input gives).
    ``units``: (rows, S·cols), weight slice s in columns [s·cols, (s+1)·cols)."""
    rows = units.shape[0]
    S = units.shape[1] // cols
    rng = np.random.default_rng([seed, rows, cols, 0xCA11])
    if x is None:
        x = rng.random((CALIBRATION_ROWS, rows)).astype(np.float32)
    x = np.asarray(x, np.float32)
    if x.ndim not in (1, 2) or x.shape[-1] != rows:
        raise SimulationError(f"mvm: x must be (batch, {rows}), got {x.shape}")
    x = x.reshape(-1, rows)
    if x.shape[0] > CALIBRATION_ROWS:               # evenly spaced vectors, deterministic
        x = x[np.linspace(0, x.shape[0] - 1, CALIBRATION_ROWS).astype(np.int64)]
    if not np.isfinite(x).all():
        raise SimulationError("mvm: x has NaN or Inf values")
    v = input_digits(x, hw).astype(np.float64)
    pick = (np.sort(rng.choice(cols, CALIBRATION_COLS, replace=False))
            if cols > CALIBRATION_COLS else np.arange(cols))
    X = hw.xbar.rows
    levels = 2 ** (hw.adc.bits - 1) - 1
    steps = np.empty((v.shape[0], S))
    for s in range(S):
        us = units[:, s * cols + pick]
        for k in range(v.shape[0]):
            cur = np.concatenate([(v[k][:, r0:r0 + X] @ us[r0:r0 + X]).ravel()
                                  for r0 in range(0, rows, X)])
            steps[k, s] = _mse_step(cur, levels)
    return steps


def _mse_step(cur: np.ndarray, levels: int) -> float:
    """The step Δ (clip at levels·Δ) minimizing mean((clip(rint(c/Δ), ±levels)·Δ − c)²): a
    log-spaced search from the clip at the median |c| to the clip at the largest, then a finer
    one around the best."""
    a = np.abs(cur)
    top = float(a.max()) if a.size else 0.0
    if top == 0.0:
        return 1.0
    lo = max(float(np.quantile(a, 0.5)), top * 1e-3) / levels

    def err(d):
        return float(np.mean((np.clip(np.rint(cur / d), -levels, levels) * d - cur) ** 2))

    grid = np.geomspace(lo, top / levels, 64) if top / levels > lo else np.array([lo])
    errs = [err(d) for d in grid]
    i = int(np.argmin(errs))
    fine = np.geomspace(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)], 33)
    cands = np.concatenate([grid, fine])
    errs = errs + [err(d) for d in fine]
    return float(cands[int(np.argmin(errs))])


def program(w: np.ndarray, hw: HwConfig, stuck: np.ndarray | None = None,
            seed: int = 0, calib: np.ndarray | None = None) -> Programmed:
    """Map ``w`` (rows, cols) onto conductances (with variation and stuck cells). With
    ``adc.range: auto`` the ADCs are calibrated on ``calib`` inputs (batch, rows), else on the
    input model of ``calibrate_steps``."""
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
    window = None
    if isinstance(stuck, Wear):
        stuck, window = stuck.stuck, stuck.window
    nsides = len(sides)
    if stuck is not None:
        stuck = np.asarray(stuck)
        if stuck.shape == w.shape:                  # per weight: every cell of it
            stuck = np.broadcast_to(stuck, (nsides * S,) + w.shape)
        if stuck.shape != (nsides * S,) + w.shape or not np.isin(stuck, (OK, SA0, SA1)).all():
            raise SimulationError(f"mvm: stuck must be int8 {w.shape} (per weight) or "
                                  f"{(nsides * S,) + w.shape} (per cell) of 0 (ok), 1 (SA0), "
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
            c = side * S + s
            if window is not None:                  # a worn cell's narrowed window
                level = np.clip(level, window[0, c], window[1, c])
            if stuck is not None:
                st = stuck[c]
                level = np.where(st == SA0, 0.0, np.where(st == SA1, float(L1), level))
            units[:, s * cols:(s + 1) * cols] += sgn * level
    edges = _chunk_edges(cols)
    order = np.concatenate([np.arange(S)[:, None] * cols + np.arange(c0, c1)[None, :]
                            for c0, c1 in zip(edges[:-1], edges[1:])], axis=None)
    U = np.ascontiguousarray(units[:, order], dtype=np.float32)
    n_in = -(-hw.dac.input_bits // hw.dac.bits)
    if hw.adc.range == "auto":
        steps = calibrate_steps(units, cols, hw, calib, seed)
    else:
        steps = np.full((n_in, S), full_scale(hw) * hw.adc.range / (2 ** (hw.adc.bits - 1) - 1))
    return Programmed(hw=hw, rows=rows, cols=cols, slices=S, w_scale=w_scale, offset=offset,
                      edges=edges, U=U, steps=steps)


def mvm(x: np.ndarray, w: np.ndarray, hw: HwConfig, stuck: np.ndarray | None = None,
        seed: int = 0, calib: np.ndarray | None = None) -> np.ndarray:
    """y = x @ w as the crossbars compute it: x (batch, rows), w (rows, cols), float32;
    stuck: int8 (rows, cols), 0 ok, 1 SA0, 2 SA1. ``seed`` seeds variation and read noise.
    With ``adc.range: auto`` the ADCs are calibrated on ``calib``, by default on x itself
    (64 of its vectors, evenly spaced)."""
    if hw.adc.range == "auto" and calib is None:
        calib = x
    return program(w, hw, stuck, seed, calib).mvm(x, seed)


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

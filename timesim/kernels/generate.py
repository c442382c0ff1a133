"""The synthetic gradient generator (counter-based, jitted): the noise, the fitted workloads'
gates and the unfused gradient chunks. The policy kernels (select.py) call it in registers
(fused generate-and-select); kernels/synth.py holds the Python entry points.

Synthetic gradients: the splitmix64 finalizer (Steele et al., OOPSLA'14) of (stream key + counter
· golden ratio) gives 64 random bits per element; its four 16-bit uniforms summed (Irwin-Hall,
n = 4) and rescaled give an approximately standard normal z (kurtosis 2.7, truncated at ±√12 ≈
3.46 σ). A layer's gradient at iteration t is

    g[r, c] = (M[r, c] · P[r]) · Q[c] + (U[r] · V[c]) · z(seed, layer, t, r·cols + c)

with a persistent (or slowly changing) cell field M and per-iteration row and column factors
P, U (rows) and Q, V (cols): the stationary workloads have P = Q = 1 (exact in float32), the
fitted ones put their drift and training-phase scale there (trace/synth.py, trace/fitted.py).
A fitted workload may also give each cell its own noise scale W (rows × cols): the noise term
is then (U[r] · V[c]) · (W[r, c] · z); an empty W (shape (0, 0)) means none.
"Fused" kernels compute g in registers while accumulating it, so a synthetic run never writes
a gradient chunk to memory; the unfused generator writes the same g, bit for bit (the same
float32 operations in the same order, no FMA contraction without fastmath).
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

# v2's two values of a hash are the two 32-bit halves of its byte sums; on a little-endian
# machine the low half (the even element) comes first in memory, so a block of sums read as
# int32 is the values in order (``_normal_row2_into``)
_LITTLE = sys.byteorder == "little"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_SQRT3 = np.float32(np.sqrt(3.0))
_INV16 = np.float32(1.0 / 65536.0)
_M16 = np.uint64(0xFFFF)
_M16X2 = np.uint64(0x0000FFFF0000FFFF)
_M32 = np.uint64(0xFFFFFFFF)
# the generators' integer sums become float32 first and are then offset, in float32: exact
# (small integers), the same values as offsetting the integers, and int32 to float32 converts
# 16 lanes an instruction where numba's int32 arithmetic (widened to int64) converts 8
_TWO = np.float32(2.0)


@njit(cache=True, inline="always")
def _mix64(z):
    # splitmix64 finalizer: a bijection of 64-bit words with good avalanche
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _stream_key(seed, layer, t):
    """Key of one (seed, layer, iteration) stream of synthetic noise."""
    k = _mix64(np.uint64(seed) + _GOLDEN)
    k = _mix64(k ^ (np.uint64(layer) + _GOLDEN))
    return _mix64(k ^ (np.uint64(t) * _GOLDEN))


@njit(cache=True, inline="always")
def _z(h):
    """Approx. N(0, 1) from 64 random bits: sum of four 16-bit uniforms (mean 2, variance 1/3);
    +2 centres the 16-bit grid (x + 0.5) / 65536."""
    a = (h & _M16X2) + ((h >> np.uint64(16)) & _M16X2)     # two sums of two fields (SWAR)
    s = (a & _M32) + (a >> np.uint64(32))
    return ((np.float32(np.int32(s)) + _TWO) * _INV16 - np.float32(2.0)) * _SQRT3


@njit(cache=True, nogil=True)
def _normal_row(key, start, out):
    """out[i] = approx. N(0, 1) for element counters start .. start+len(out)-1 of stream ``key``."""
    ctr = key + np.uint64(start) * _GOLDEN
    for i in range(out.shape[0]):
        out[i] = _z(_mix64(ctr))
        ctr += _GOLDEN              # a counter, not i · golden: one vector multiply fewer


@njit(cache=True, nogil=True)
def _normal_row_scaled(key, start, out, w):
    """out[i] = w[i] · z for the counters of ``_normal_row``: a cell's own noise scale applied
    where the noise is made (the hashing loop has room for one more load and multiply)."""
    ctr = key + np.uint64(start) * _GOLDEN
    for i in range(out.shape[0]):
        out[i] = w[i] * _z(_mix64(ctr))
        ctr += _GOLDEN


@njit(cache=True, nogil=True)
def _gate_block(seed, stream, t0, probs, table, slope, step, grid, scale, imp, which, u, out):
    """out[i, c] = scale[i] · imp[which[i], c] · g, g drawn by inverse CDF from a quantile
    table: ``table`` at increasing ``probs`` from 0 to 1, linear in between (``slope``: the
    table's slope on each interval; ``step``: its rise on each interval of the grid).
    ``probs`` starts with the uniform grid k / ``grid`` up to (grid - 1) / grid, so below that
    an interval is found by integer arithmetic; the few values in the finer upper tail are
    looked up by a scan. Uniforms: the two 32-bit halves x of each splitmix64 hash of stream
    (seed, stream, t0 + i), u = (x + 0.5) / 2^32. ``u``: a uint64 scratch row. The row and
    column factors of the fitted workloads (trace/fitted.py).

    On the grid, y = u · grid = (2x + 1) · grid / 2^33 is exact in float64 (an integer of at
    most 40 bits times a power of two), its interval k = ⌊y⌋ is the integer (2x + 1) · grid
    >> 33, and u >= probs[grid - 1] exactly when k = grid - 1 (for the grid of 96 in use, u, an
    odd multiple of 2^-33, is never within 2^-35 of 95/96): the same numbers as u · grid in
    floating point and a comparison with probs[grid - 1], without the float-to-unsigned
    conversions (25-30% faster; tests/test_fit.py compares both forms)."""
    last = probs.shape[0] - 2
    top = np.uint64(grid - 1)
    g = np.uint64(grid)
    inv33 = 1.0 / 8589934592.0
    inv = 1.0 / 4294967296.0
    cols = out.shape[1]
    half = (cols + 1) >> 1
    for i in range(out.shape[0]):
        key = _stream_key(seed, stream, t0 + i)
        for c2 in range(half):
            h = _mix64(key + np.uint64(c2) * _GOLDEN)
            u[2 * c2] = h & _M32
            u[2 * c2 + 1] = h >> np.uint64(32)
        row = out[i]
        base = imp[which[i]]
        si = scale[i]
        for c in range(cols):
            m = (u[c] * np.uint64(2) + np.uint64(1)) * g
            k = m >> np.uint64(33)
            if k < top:
                # signed conversions: the values are below 2^40
                y = np.float64(np.int64(m)) * inv33
                row[c] = si * base[c] * (table[k] + (y - np.float64(np.int64(k))) * step[k])
            else:                          # the upper tail: probs finer than the grid
                x = (np.float64(np.int64(u[c])) + 0.5) * inv
                j = grid - 1
                while j < last and probs[j + 1] <= x:
                    j += 1
                row[c] = si * base[c] * (table[j] + (x - probs[j]) * slope[j])


@njit(cache=True, nogil=True)
def _fitted_factors(seed, t0, probs, grid, sigma,
                    row_stream, row_table, row_slope, row_step, row_imp, row_which,
                    col_stream, col_table, col_slope, col_step, col_imp, col_which,
                    loud_stream, loud_table, loud_slope, loud_step, P, U, Q):
    """A fitted layer's row and column factors of iterations t0 .. t0+n-1 in one call (no
    Python between the draws): P = σ · row importance · row gate, Q = column importance ·
    column gate (``_gate_block`` each), and U = P · λ with λ one draw per iteration from the
    loudness table (none when ``loud_table`` is empty: U is then not written). The same
    numbers as three ``inverse_cdf_block`` calls and a float32 product."""
    n = P.shape[0]
    width = max(P.shape[1], Q.shape[1])
    scratch = np.empty(width + 1, dtype=np.uint64)
    ones = np.ones(n)
    _gate_block(seed, row_stream, t0, probs, row_table, row_slope, row_step, grid, sigma,
                row_imp, row_which, scratch, P)
    _gate_block(seed, col_stream, t0, probs, col_table, col_slope, col_step, grid, ones,
                col_imp, col_which, scratch, Q)
    if loud_table.shape[0] > 0:
        lam = np.empty((n, 1), dtype=np.float32)
        _gate_block(seed, loud_stream, t0, probs, loud_table, loud_slope, loud_step, grid,
                    ones, np.ones((1, 1), dtype=np.float32), np.zeros(n, dtype=np.int64),
                    scratch, lam)
        for i in range(n):
            li = lam[i, 0]
            Pi = P[i]
            Ui = U[i]
            for r in range(P.shape[1]):
                Ui[r] = Pi[r] * li


@njit(cache=True, nogil=True)
def _gradient_chunk(out, seed, layer, t0, M, P, Q, U, V, W, gen=1):
    """out[i, r, c] = (M[r, c]·P[i, r])·Q[i, c] + (U[i, r]·V[i, c])·(W[r, c]·z(seed, layer,
    t0 + i, ...)), without W when it is empty: the unfused generator (for trace files and the
    tests of the fused kernels); z of generator ``gen`` (1 or 2)."""
    n, rows, cols = out.shape
    for i in range(n):
        key = _stream_key(seed, layer, t0 + i)
        flat = out[i].reshape(rows * cols)
        if gen == 2:
            _normal_row2(key, 0, flat)
        else:
            _normal_row(key, 0, flat)
        if W.shape[0] > 0:
            wflat = W.reshape(rows * cols)
            for j in range(rows * cols):
                flat[j] = wflat[j] * flat[j]
        Qi = Q[i]
        Vi = V[i]
        for r in range(rows):
            row = out[i, r]
            Mr = M[r]
            p = P[i, r]
            u = U[i, r]
            for c in range(cols):
                row[c] = (Mr[c] * p) * Qi[c] + (u * Vi[c]) * row[c]


# ---- generator v2 (``gen=2``, issue 27): two values per splitmix64 hash ----------------------
#
# The same 64-bit hashes as v1 (the splitmix64 finalizer of stream key + counter · golden
# ratio: the SplitMix64 generator's outputs), but each hash gives two values: element e reads
# hash e >> 1, its low 32 bits when e is even, its high 32 bits when odd. A value is the
# Irwin-Hall sum of the four bytes of its 32 bits, (b + 0.5) / 256 each, centred and scaled to
# unit variance: z = (s - 510) · √3 / 256 / √(1 - 2^-16), s = Σ bytes (the discrete sum's
# variance is (1 - 2^-16) / 3): the v1 distribution (Irwin-Hall, n = 4, kurtosis 2.7,
# |z| ≤ 3.45) on a grid of 1021 levels instead of 65533, at half the hashes.

_M8X4 = np.uint64(0x00FF00FF00FF00FF)
_Z2_SCALE = np.float32(np.sqrt(3.0 / (1.0 - 2.0 ** -16)) / 256.0)
_MID2 = np.float32(510.0)


@njit(cache=True, inline="always")
def _byte_sums(h):
    """The byte sums of the two 32-bit halves of h, in the two halves of the result (SWAR)."""
    a = (h & _M8X4) + ((h >> np.uint64(8)) & _M8X4)
    return (a & _M16X2) + ((a >> np.uint64(16)) & _M16X2)


@njit(cache=True, inline="always")
def _z2(s):
    """v2's value of one 32-bit byte sum s (0 .. 1020)."""
    return (np.float32(np.int32(s)) - _MID2) * _Z2_SCALE


@njit(cache=True, nogil=True)
def _normal_row2(key, start, out):
    """v2: out[i] = approx. N(0, 1) for element counters start .. start+len(out)-1 of stream
    ``key``; any start and length (an odd start or end takes one half of a hash)."""
    _normal_row2_into(key, start, out, np.empty(2048, dtype=np.float32))


@njit(cache=True, nogil=True, inline="always")
def _normal_row2_into(key, start, out, buf):
    """``_normal_row2`` with a scratch buffer ``buf`` (float32, 8-byte aligned, ≥ 2 entries;
    the policy kernels pass a part of their block buffer). Little-endian: the byte sums of up
    to len(buf)/2 hashes at a time into buf as uint64, then read back as int32 and scaled
    (32-bit lanes, no stride-2 store: 0.30 against 0.35 ns a value here, the same values).
    Else one hash at a time, two stores."""
    n = out.shape[0]
    i = 0
    if start & 1 and n > 0:
        out[0] = _z2(_byte_sums(_mix64(key + np.uint64(start >> 1) * _GOLDEN)) >> np.uint64(32))
        i = 1
    m = (n - i) >> 1
    base = key + np.uint64((start + i) >> 1) * _GOLDEN
    o = out[i:i + 2 * m]
    if _LITTLE:
        tile = buf.shape[0] >> 1
        sums = buf[:2 * tile].view(np.uint64)
        halves = buf[:2 * tile].view(np.int32)
        j0 = 0
        while j0 < m:
            k = min(tile, m - j0)
            ctr = base + np.uint64(j0) * _GOLDEN
            for j in range(k):
                sums[j] = _byte_sums(_mix64(ctr))
                ctr += _GOLDEN
            oj = o[2 * j0:2 * (j0 + k)]
            for e in range(2 * k):
                oj[e] = (np.float32(halves[e]) - _MID2) * _Z2_SCALE
            j0 += k
    else:
        ctr = base
        for j in range(m):
            s = _byte_sums(_mix64(ctr))
            ctr += _GOLDEN
            o[2 * j] = _z2(s & _M32)
            o[2 * j + 1] = _z2(s >> np.uint64(32))
    if i + 2 * m < n:
        out[n - 1] = _z2(_byte_sums(_mix64(base + np.uint64(m) * _GOLDEN)) & _M32)

"""Analog MVM kernels in numba: input quantization into DAC slices, and the ADC stage (read
noise, quantization, clipping, digital shift-and-add of every partial sum).

Currents arrive in integer units (Σ input-slice level × cell-level difference, exact in float32
for the sizes used), so the result does not depend on the summation order of the matmul that
produced them; codes are accumulated in float64 as exact integers.

The read noise is generated inside the ADC loop by the same counter-based normal generator as
kernels/synth.py (splitmix64 + Irwin-Hall): it is repeated here on purpose, because a jitted
call into another file would not be seen by numba's on-disk cache; ``tests/test_analog.py``
checks that both give identical values.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_SQRT3 = np.float32(np.sqrt(3.0))
_INV16 = np.float32(1.0 / 65536.0)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_M16 = np.uint64(0xFFFF)


@njit(cache=True, inline="always")
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _stream_key(seed, stream):
    k = _mix64(np.uint64(seed) + _GOLDEN)
    k = _mix64(k ^ (np.uint64(stream) + _GOLDEN))
    return _mix64(k ^ (np.uint64(0) * _GOLDEN))


@njit(cache=True, inline="always")
def _normal(key, i):
    z = _mix64(key + np.uint64(i) * _GOLDEN)
    s = (z & _M16) + ((z >> np.uint64(16)) & _M16) + ((z >> np.uint64(32)) & _M16) \
        + (z >> np.uint64(48))
    return (np.float32(np.int64(s) + 2) * _INV16 - np.float32(2.0)) * _SQRT3


@njit(cache=True)
def _input_scales(x, top, scale):
    """scale[b] = max|x[b]| / top (1/top for an all-zero row)."""
    for b in range(x.shape[0]):
        m = np.float32(0.0)
        for r in range(x.shape[1]):
            m = max(m, abs(x[b, r]))
        scale[b] = (m if m > 0 else 1.0) / top


@njit(cache=True)
def _input_slice(x, scale, shift, mask, out):
    """out = sign(x) · ((rint(|x| / scale) >> shift) & mask), as float32."""
    for b in range(x.shape[0]):
        inv = np.float32(1.0 / scale[b])
        for r in range(x.shape[1]):
            v = x[b, r]
            m = np.int64(np.rint(abs(v) * inv))
            s = np.float32((m >> shift) & mask)
            out[b, r] = s if v >= 0 else -s


@njit(cache=True)
def _adc_accumulate(cur, col0, ncols, key, sigma, step, levels, weight, acc):
    """acc[b, j] += weight · clip(rint((cur[b, col0 + j] + sigma·z) / step), ±levels).

    z is element (b, col0 + j) of the noise stream ``key`` laid out row-major over cur's full
    width (no noise when sigma == 0). Branch-free inner loops, so both vectorize.
    """
    B = cur.shape[0]
    width = cur.shape[1]
    inv = 1.0 / step
    lo = -float(levels)
    hi = float(levels)
    if sigma > 0:
        for b in range(B):
            base = b * width + col0
            row = cur[b]
            out = acc[b]
            for j in range(ncols):
                v = float(row[col0 + j]) + sigma * float(_normal(key, base + j))
                out[j] += weight * min(max(np.rint(v * inv), lo), hi)
    else:
        for b in range(B):
            row = cur[b]
            out = acc[b]
            for j in range(ncols):
                out[j] += weight * min(max(np.rint(float(row[col0 + j]) * inv), lo), hi)


def noise(seed: int, stream: int, shape: tuple[int, int]) -> np.ndarray:
    """The read-noise values the ADC adds for (seed, stream), as an array (for references)."""
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(-1)
    _fill(np.uint64(_stream_key(np.int64(seed), np.int64(stream))), flat)
    return out


@njit(cache=True)
def _fill(key, out):
    for i in range(out.shape[0]):
        out[i] = _normal(key, i)

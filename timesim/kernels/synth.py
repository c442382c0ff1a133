"""Counter-based random numbers for synthetic gradients (Python entry points).

The jitted generator lives in ``select.py`` beside the policy kernels that consume it in
registers (fused generate-and-select); its docstring defines the numbers. Any element can be
regenerated from its counter alone.
"""

from __future__ import annotations

import numpy as np

from .select import _gradient_chunk, _normal_row, _stream_key, _uniform_block, _uniform_row

__all__ = ["_normal_row", "_stream_key", "fill_normal", "gradient_chunk", "normal", "uniform",
           "uniform_block"]


def normal(seed: int, layer: int, t: int, size: int) -> np.ndarray:
    """``size`` approximately standard-normal float32 values of one stream (for tests and docs)."""
    out = np.empty(size, dtype=np.float32)
    _normal_row(np.uint64(_stream_key(np.int64(seed), np.int64(layer), np.int64(t))), 0, out)
    return out


def uniform(seed: int, stream: int, t: int, size: int) -> np.ndarray:
    """``size`` float64 uniforms in (0, 1) of stream (seed, stream, t)."""
    out = np.empty(size, dtype=np.float64)
    _uniform_row(np.uint64(_stream_key(np.int64(seed), np.int64(stream), np.int64(t))), 0, out)
    return out


def uniform_block(seed: int, stream: int, t0: int, n: int, size: int) -> np.ndarray:
    """(n, size) uniforms: row i is ``uniform(seed, stream, t0 + i, size)``."""
    out = np.empty((n, size), dtype=np.float64)
    _uniform_block(np.int64(seed), np.int64(stream), np.int64(t0), out)
    return out


def gradient_chunk(out: np.ndarray, seed: int, layer: int, t0: int, M: np.ndarray,
                   P: np.ndarray, Q: np.ndarray, U: np.ndarray, V: np.ndarray) -> None:
    """Fill ``out`` (n, rows, cols) float32 in place with iterations t0 .. t0+n-1 of one layer:
    out[i, r, c] = (M[r, c]·P[i, r])·Q[i, c] + (U[i, r]·V[i, c])·z (select.py)."""
    _gradient_chunk(out, np.int64(seed), np.int64(layer), np.int64(t0), M, P, Q, U, V)


def fill_normal(out: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Fill a C-contiguous float32 array with approx. N(0, 1) values of stream (seed, stream)."""
    flat = out.reshape(-1)
    _normal_row(np.uint64(_stream_key(np.int64(seed), np.int64(stream), np.int64(0))), 0, flat)
    return out

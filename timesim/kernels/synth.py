"""Counter-based random numbers for synthetic gradients (Python entry points).

The jitted generator lives in ``generate.py`` (its docstring defines the numbers); the policy
kernels of ``select.py`` consume it in registers (fused generate-and-select). Any element can
be regenerated from its counter alone.
"""

from __future__ import annotations

import numpy as np

from .generate import (
    _fitted_factors,
    _gate_block,
    _gradient_chunk,
    _normal_row,
    _normal_row2,
    _stream_key,
)

__all__ = ["_fitted_factors", "_normal_row", "_normal_row2", "_stream_key", "fill_normal",
           "gradient_chunk", "inverse_cdf_block", "normal"]


def normal(seed: int, layer: int, t: int, size: int, gen: int = 1,
           start: int = 0) -> np.ndarray:
    """``size`` approximately standard-normal float32 values of one stream, from element
    counter ``start`` on, by generator ``gen`` (1 or 2) (for tests and docs)."""
    out = np.empty(size, dtype=np.float32)
    key = np.uint64(_stream_key(np.int64(seed), np.int64(layer), np.int64(t)))
    (_normal_row2 if gen == 2 else _normal_row)(key, np.int64(start), out)
    return out


def inverse_cdf_block(seed: int, stream: int, t0: int, n: int, size: int, probs: np.ndarray,
                      table: np.ndarray, grid: int, scale: np.ndarray | None = None,
                      imp: np.ndarray | None = None, which: np.ndarray | None = None,
                      slope: np.ndarray | None = None,
                      step: np.ndarray | None = None) -> np.ndarray:
    """(n, size) float32 draws by inverse CDF (``table`` at ``probs``, linear in between;
    ``probs`` begins with the uniform grid k / ``grid``) from two 32-bit uniforms per hash of
    stream (seed, stream, t0 + i) (generate._gate_block); row i times ``scale[i]`` and
    ``imp[which[i]]`` (row vectors; default ones). ``slope``, ``step``: the table's slope per
    interval and its rise per interval of the grid, if precomputed."""
    out = np.empty((n, size), dtype=np.float32)
    scale = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    if imp is None:
        imp, which = np.ones((1, size), np.float32), np.zeros(n, np.int64)
    if slope is None:
        slope = np.diff(table) / np.diff(probs)
    if step is None:
        step = np.diff(table[:grid])
    _gate_block(np.int64(seed), np.int64(stream), np.int64(t0), probs, table, slope, step,
                np.int64(grid), scale, imp, which, np.empty(size + 1, dtype=np.uint64), out)
    return out


NO_CELLSCALE = np.zeros((0, 0), dtype=np.float32)


def gradient_chunk(out: np.ndarray, seed: int, layer: int, t0: int, M: np.ndarray,
                   P: np.ndarray, Q: np.ndarray, U: np.ndarray, V: np.ndarray,
                   W: np.ndarray = NO_CELLSCALE, gen: int = 1) -> None:
    """Fill ``out`` (n, rows, cols) float32 in place with iterations t0 .. t0+n-1 of one layer:
    out[i, r, c] = (M[r, c]·P[i, r])·Q[i, c] + (U[i, r]·V[i, c])·z, z times W[r, c] first
    when W is given; z of generator ``gen`` (1 or 2; generate.py)."""
    _gradient_chunk(out, np.int64(seed), np.int64(layer), np.int64(t0), M, P, Q, U, V, W,
                    np.int64(gen))


def fill_normal(out: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Fill a C-contiguous float32 array with approx. N(0, 1) values of stream (seed, stream)."""
    flat = out.reshape(-1)
    _normal_row(np.uint64(_stream_key(np.int64(seed), np.int64(stream), np.int64(0))), 0, flat)
    return out

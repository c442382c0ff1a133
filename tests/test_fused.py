"""Fused generate-and-select kernels: the same results as generating each chunk first, and a
generator that computes exactly the formula of kernels/generate.py."""

import json

import numpy as np
import pytest

import timesim
from timesim.kernels.synth import gradient_chunk, normal
from timesim.policies import LayerPolicy
from timesim.trace.format import LayerInfo

from .reference import GOLDEN, M64, mix64


def ref_z(seed, layer, t, size):
    """The generator's normals on Python ints: Irwin-Hall of four 16-bit fields."""
    key = mix64((seed + GOLDEN) & M64)
    key = mix64(key ^ ((layer + GOLDEN) & M64))
    key = mix64(key ^ ((t * GOLDEN) & M64))
    out = np.empty(size, np.float32)
    for i in range(size):
        h = mix64((key + i * GOLDEN) & M64)
        s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48)
        out[i] = (np.float32(s + 2) * np.float32(1 / 65536) - np.float32(2)) \
            * np.float32(np.sqrt(3.0))
    return out


def factors(rng, n, rows, cols, cellscale=False):
    f = lambda *s: rng.lognormal(0, 0.5, s).astype(np.float32)  # noqa: E731
    W = f(rows, cols) if cellscale else np.zeros((0, 0), np.float32)
    return (rng.standard_normal((rows, cols)).astype(np.float32), f(n, rows), f(n, cols),
            f(n, rows), f(n, cols), W)


def test_generator_is_the_formula_on_python_ints():
    rng = np.random.default_rng(3)
    n, rows, cols = 3, 4, 5
    for cellscale in (False, True):
        M, P, Q, U, V, W = factors(rng, n, rows, cols, cellscale)
        out = np.empty((n, rows, cols), np.float32)
        gradient_chunk(out, 11, 2, 40, M, P, Q, U, V, W)
        for i in range(n):
            z = ref_z(11, 2, 40 + i, rows * cols).reshape(rows, cols)
            if cellscale:
                z = W * z
            want = (M * P[i][:, None]) * Q[i][None, :] + (U[i][:, None] * V[i][None, :]) * z
            assert np.array_equal(out[i].view(np.int32), want.view(np.int32))
    assert np.array_equal(normal(11, 2, 40, rows * cols), ref_z(11, 2, 40, rows * cols))


@pytest.mark.parametrize("selection,wl,pulses", [
    ("sgs", "ars", "fixed"), ("sgs", "ars-random", "delta"), ("topk", "none", "delta"),
    ("topk", "ars", "fixed"), ("dense", "none", "delta")])
@pytest.mark.parametrize("rows,cols", [(300, 9), (40, 33)])
@pytest.mark.parametrize("gen", [1, 2])
def test_fused_kernels_equal_the_unfused_ones(selection, wl, pulses, rows, cols, gen):
    """Random factors, a chunk cut into random pieces: accumulators bit for bit, write
    counts, row maps, stats and the per-iteration signature all equal. Both generators;
    some pieces with unit factors P = Q = 1 and no cell scales (a stationary stream: the
    kernels' UNIT paths), on odd row lengths (300 x 9: the second block of 227 rows starts
    at value 2043, inside a v2 hash)."""
    rng = np.random.default_rng(rows + cols)
    hw = timesim.load_hwconfig(None, [f"controller.selection={selection}",
                                      f"controller.wear_leveling={wl}", "controller.interval=8",
                                      "controller.topk_density=0.02", f"write.pulses={pulses}"])
    layer = LayerInfo("x", "linear", rows, cols)
    a, b = LayerPolicy(layer, hw, 1), LayerPolicy(layer, hw, 1)
    t0 = 0
    for n in (13, 1, 30):
        cuts = sorted(rng.choice(np.arange(1, n), size=min(2, n - 1), replace=False)) \
            if n > 2 else []
        bounds = [0, *cuts, n]
        pieces, chunk = [], np.empty((n, rows, cols), np.float32)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            src = factors(rng, hi - lo, rows, cols, cellscale=(lo % 2 == 1))
            if lo % 3 == 0:                     # unit factors, no cell scales
                src = (src[0], np.ones_like(src[1]), np.ones_like(src[2]), *src[3:5],
                       np.zeros((0, 0), np.float32))
            pieces.append((t0 + lo, hi - lo, *src))
            gradient_chunk(chunk[lo:hi], 5, 1, t0 + lo, *src, gen=gen)
        a.process(chunk, t0)
        b.process_source(5, 1, pieces, t0, n, gen=gen)
        sig_a = [np.zeros(n, np.int64) for _ in range(3)]
        sig_b = [np.zeros(n, np.int64) for _ in range(3)]
        a.write_signature(*sig_a)
        b.write_signature(*sig_b)
        for x, y in zip(sig_a, sig_b):
            assert np.array_equal(x, y)
        t0 += n
    a.finish()
    b.finish()
    for k in ("writes", "counters", "l2p", "stats"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    if a.A is not None:
        assert np.array_equal(a.A.view(np.int32), b.A.view(np.int32))


def test_fused_runs_equal_unfused_runs():
    """Whole runs of a synthetic stream, one and two threads: every result field equal."""
    hw = timesim.load_hwconfig(None, ["controller.interval=32"])
    trace = "synth:mlp-small?iterations=300&chunk=17"
    runs = [timesim.simulate(hw, trace, fused=f, threads=n) for f, n in
            ((False, 1), (True, 1), (True, 2))]
    keys = ("writes", "ars", "cycles", "energy_j", "lifetime")
    ref = json.dumps({k: runs[0][k] for k in keys}, sort_keys=True)
    for r in runs[1:]:
        assert json.dumps({k: r[k] for k in keys}, sort_keys=True) == ref


@pytest.mark.parametrize("n", [1, 3, 8])
def test_synthetic_pieces_are_writeable_contiguous_float32_whatever_the_chunk(n):
    """Every array a synthetic piece hands the kernels has one numba type: C-contiguous,
    writeable float32. A read-only one (np.broadcast_to of one row passed through
    ascontiguousarray, as a last chunk of 1 iteration gave) is another type, compiled again
    on the first short chunk of a run (3 s per kernel on ResNet-50)."""
    from timesim.trace.synth import SynthTrace

    trace = SynthTrace("resnet20", iterations=64, chunk=8)
    for li in (0, 5):
        (t0, m, *arrays), = trace.pieces(li, 0, n)
        assert (t0, m) == (0, n)
        for a in arrays:
            assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
        rows, cols = trace.meta.layers[li].rows, trace.meta.layers[li].cols
        assert arrays[3].shape == (n, rows) and arrays[4].shape == (n, cols)
        np.testing.assert_array_equal(arrays[3], np.tile(trace.structure(li)[1], (n, 1)))


@pytest.mark.parametrize("selection", ["sgs-row", "sgs-element", "topk"])
@pytest.mark.parametrize("rows,cols", [(300, 9), (130, 16), (40, 33)])
def test_stationary_narrow_pieces_added_flat_equal_the_unfused_ones(selection, rows, cols):
    """Generator 2, unit P and Q, U and V the same in every iteration (a synth:MODEL stream):
    the kernels add narrow rows from per-cell factors U·V in one flat loop (select.CELLUV);
    against the generated chunk, also with every sgs-row layer blocked in time (a written
    row regenerated with those factors) and split over three row ranges."""
    from timesim.kernels import select as K

    rng = np.random.default_rng(rows * cols)
    hw = timesim.load_hwconfig(None, [f"controller.selection={selection}",
                                      "controller.wear_leveling=ars", "controller.interval=6",
                                      "controller.topk_density=0.02"])
    layer = LayerInfo("x", "linear", rows, cols)
    n = 29
    M = (0.5 * rng.standard_normal((rows, cols))).astype(np.float32)
    M[rows // 3] *= 30                           # one row wins often: rewritten in a pass
    U = np.repeat(rng.lognormal(0, 0.5, (1, rows)).astype(np.float32), n, axis=0)
    V = np.repeat(rng.lognormal(0, 0.5, (1, cols)).astype(np.float32), n, axis=0)
    ones_r, ones_c = np.ones((n, rows), np.float32), np.ones((n, cols), np.float32)
    src = (M, ones_r, ones_c, U, V, np.zeros((0, 0), np.float32))
    chunk = np.empty((n, rows, cols), np.float32)
    gradient_chunk(chunk, 4, 2, 0, *src, gen=2)
    a = LayerPolicy(layer, hw, 2)
    a.process(chunk, 0)
    saved = K.TB_CELLS
    for blocked, split in ((False, 1), (True, 1), (True, 3)):
        K.TB_CELLS = 0 if blocked else saved
        try:
            b = LayerPolicy(layer, hw, 2)
            b.split = split
            assert b._generator(2, None, src)[0] & K.CELLUV
            b.process_source(4, 2, [(0, 13, *(x[:13] if x.ndim == 2 and x.shape[0] == n
                                               else x for x in src)),
                                    (13, n - 13, *(x[13:] if x.ndim == 2 and x.shape[0] == n
                                                   else x for x in src))], 0, n, gen=2)
        finally:
            K.TB_CELLS = saved
        for k in ("writes", "counters", "l2p", "stats"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), (k, blocked, split)
        assert np.array_equal(a.A.view(np.int32), b.A.view(np.int32))

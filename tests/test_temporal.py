"""Temporal blocking of row-wise SGS (kernels/select.py ``_run_sgs_row_tb``): several
iterations per pass over the rows, then the choices in order; the same numbers as the plain
reference (tests/reference.py) and as one pass an iteration, bit for bit."""

from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import timesim
from timesim.errors import TraceError
from timesim.kernels import select as K
from timesim.kernels.synth import gradient_chunk
from timesim.policies import LayerPolicy
from timesim.trace.format import LayerInfo

from .conftest import make_hw, random_grads
from .reference import run_reference
from .test_fused import factors
from .test_generator import GEN1, run_digest


@contextmanager
def temporal_everywhere():
    """Every sgs-row layer blocked in time, however small (the default is from
    K.TB_CELLS cells on)."""
    saved = K.TB_CELLS
    K.TB_CELLS = 0
    try:
        yield
    finally:
        K.TB_CELLS = saved


def state_of(pol):
    return {k: np.asarray(v).view(np.int32) if v.dtype == np.float32 else v
            for k, v in pol.state().items()}


def assert_same_state(a, b):
    sa, sb = state_of(a), state_of(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 40), rows=st.integers(1, 40),
       cols=st.integers(1, 9), wl=st.sampled_from(["none", "ars", "ars-random"]),
       interval=st.integers(1, 6), R=st.integers(1, 10), block_rows=st.integers(1, 12),
       style=st.sampled_from(["normal", "ties", "hot-row"]), chunk=st.integers(1, 20),
       parts=st.integers(1, 4))
def test_blocked_rows_match_the_reference(seed, T, rows, cols, wl, interval, R, block_rows,
                                          style, chunk, parts):
    """Random traces (many exact ties; one row winning every iteration, so a row is written
    again inside the same pass), any chunking, rows split over 1-4 ranges: the plain numpy
    reference's writes, counters, row map, choices and accumulators."""
    G = random_grads(np.random.default_rng(seed), T, rows, cols, style)
    hw = make_hw("sgs-row", wl, interval, R, block_rows, 1, 0.01, seed=seed)
    pol = LayerPolicy(LayerInfo("L", "linear", rows, cols), hw)
    pol.split = parts
    selected = []
    with temporal_everywhere():
        for t0 in range(0, T, chunk):
            part = np.ascontiguousarray(G[t0:t0 + chunk])
            pol.process(part, t0)
            selected.extend(pol.selected[:part.shape[0]].tolist())
    ref = run_reference(G, "sgs-row", wear_leveling=wl, interval=interval, R=R,
                        block_rows=block_rows, seed=seed)
    assert selected == ref.selected
    np.testing.assert_array_equal(pol.writes, ref.writes)
    np.testing.assert_array_equal(pol.counters, ref.counters)
    np.testing.assert_array_equal(pol.l2p, np.array(ref.l2p))
    assert pol.swaps == ref.swaps and pol.policy_cell_writes == ref.policy_cells
    assert pol.max_writes == ref.writes.max()
    np.testing.assert_array_equal(pol.A.view(np.int32), ref.A.view(np.int32))


@pytest.mark.parametrize("gen", [1, 2])
@pytest.mark.parametrize("parts", [1, 3])
def test_generated_rows_blocked_in_time_equal_one_pass_an_iteration(gen, parts):
    """Fused generator pieces of every kind (unit factors, drifting P and Q, per-cell noise
    scales), a chunk cut at random and lengths not multiples of the pass (K.TB_STEPS), on a
    layer whose hot rows are written again inside a pass: state and signatures equal."""
    rng = np.random.default_rng(gen * 10 + parts)
    rows, cols = 300, 9
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row",
                                      "controller.wear_leveling=ars", "controller.interval=5"])
    layer = LayerInfo("x", "linear", rows, cols)
    a, b = LayerPolicy(layer, hw, 1), LayerPolicy(layer, hw, 1)
    a.temporal = False
    b.split = parts
    t0 = 0
    for n in (13, 1, 30, 8):
        bounds = [0, *sorted(rng.choice(np.arange(1, n), size=min(2, n - 1),
                                        replace=False)), n] if n > 2 else [0, n]
        pieces = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            M, P, Q, U, V, W = factors(rng, hi - lo, rows, cols, cellscale=(lo % 2 == 1))
            M[7] *= 40                                   # row 7 wins often
            if lo % 3 == 0:
                P, Q, W = np.ones_like(P), np.ones_like(Q), np.zeros((0, 0), np.float32)
            pieces.append((t0 + lo, hi - lo, M, P, Q, U, V, W))
        with temporal_everywhere():
            a.process_source(5, 1, pieces, t0, n, gen=gen)
            b.process_source(5, 1, pieces, t0, n, gen=gen)
        sigs = [[np.zeros(n, np.int64) for _ in range(3)] for _ in range(2)]
        a.write_signature(*sigs[0])
        b.write_signature(*sigs[1])
        for x, y in zip(*sigs):
            assert np.array_equal(x, y)
        assert (np.bincount(b.selected[:n], minlength=rows)[7] > 1) or n < 8
        t0 += n
    assert_same_state(a, b)


def test_float16_chunks_blocked_in_time_equal_one_pass_an_iteration():
    rng = np.random.default_rng(4)
    g = random_grads(rng, 37, 200, 24, "normal").astype(np.float16)
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row",
                                      "controller.wear_leveling=ars", "controller.interval=4"])
    layer = LayerInfo("x", "linear", 200, 24)
    a, b = LayerPolicy(layer, hw), LayerPolicy(layer, hw)
    a.temporal = False
    with temporal_everywhere():
        for t0 in range(0, 37, 11):
            bits = np.ascontiguousarray(g[t0:t0 + 11]).view(np.uint16)
            a.process_half(bits, t0)
            b.process_half(bits, t0)
    assert_same_state(a, b)


@pytest.mark.parametrize("parts", [1, 2])
def test_a_non_finite_iteration_is_named_inside_a_pass(parts):
    """A NaN in a row written earlier in the same pass (regenerated from zero) and one in a
    row never written: the iteration reported is the serial kernel's."""
    rng = np.random.default_rng(9)
    g = random_grads(rng, 16, 64, 8, "hot-row")
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row"])
    layer = LayerInfo("x", "linear", 64, 8)
    for row, it in ((32, 5), (3, 6)):         # row 32: the hot row, written every iteration
        bad = g.copy()
        bad[it, row, 2] = np.nan
        for temporal in (False, True):
            pol = LayerPolicy(layer, hw)
            pol.temporal = temporal
            pol.split = parts
            with temporal_everywhere(), pytest.raises(TraceError, match=f"iteration {it}:"):
                pol.process(bad, 0)


def test_stored_digests_with_every_sgs_row_layer_blocked_in_time():
    """The stored gen=1 digests (computed one pass an iteration, before temporal blocking)
    with every sgs-row layer blocked: ResNet-20 with ARS, the fitted digits profile
    (drifting factors), the chasing hammer; and a run on two threads."""
    with temporal_everywhere():
        for spec, sets, digest in (GEN1[0], GEN1[3], GEN1[4]):
            assert run_digest(spec, sets) == digest
        assert run_digest(*GEN1[0][:2], threads=2) == GEN1[0][2]


def test_big_layers_are_blocked_and_pulse_counting_is_not():
    """The dispatch: sgs-row from K.TB_CELLS cells on, unless write.pulses=delta needs a
    written row's value (the speculation has added past it)."""
    calls = []
    real = K._run_sgs_row_tb

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    rows, cols = 1024, K.TB_CELLS // 1024
    g = np.zeros((2, rows, cols), np.float32)
    g[:, 5, 0] = 1.0
    for pulses, blocked in (("fixed", True), ("delta", False)):
        hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row",
                                          f"write.pulses={pulses}"])
        pol = LayerPolicy(LayerInfo("x", "linear", rows, cols), hw)
        calls.clear()
        K._run_sgs_row_tb = spy
        try:
            pol.process(g, 0)
        finally:
            K._run_sgs_row_tb = real
        assert bool(calls) == blocked
        assert pol.selected[:2].tolist() == [5, 5]
    small = LayerPolicy(LayerInfo("x", "linear", rows, cols // 2),
                        timesim.load_hwconfig(None, ["controller.selection=sgs-row"]))
    calls.clear()
    K._run_sgs_row_tb = spy
    try:
        small.process(g[:, :, :cols // 2].copy(), 0)
    finally:
        K._run_sgs_row_tb = real
    assert not calls


def test_generated_chunk_matches_blocked_replay():
    """The same stream replayed from its generated chunk and generated in the kernel, both
    blocked in time, against the plain reference."""
    rows, cols, n = 150, 12, 21
    rng = np.random.default_rng(2)
    M, P, Q, U, V, W = factors(rng, n, rows, cols)
    chunk = np.empty((n, rows, cols), np.float32)
    gradient_chunk(chunk, 3, 0, 0, M, P, Q, U, V, W, gen=2)
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row",
                                      "controller.wear_leveling=ars", "controller.interval=3",
                                      "controller.rows=8"])
    layer = LayerInfo("x", "linear", rows, cols)
    a, b = LayerPolicy(layer, hw), LayerPolicy(layer, hw)
    with temporal_everywhere():
        a.process(chunk, 0)
        b.process_source(3, 0, [(0, n, M, P, Q, U, V, W)], 0, n, gen=2)
    ref = run_reference(chunk, "sgs-row", wear_leveling="ars", interval=3, R=8)
    assert a.selected[:n].tolist() == b.selected[:n].tolist() == ref.selected
    np.testing.assert_array_equal(a.A.view(np.int32), ref.A.view(np.int32))
    assert_same_state(a, b)

"""Analog MVM against x @ W (ideal settings) and the numpy reference (quantized), and faults."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import timesim
from timesim.analog import SA0, SA1, evaluate_model, mvm, program, wearout_faults
from timesim.errors import SimulationError
from timesim.kernels.mvm import noise as adc_noise
from timesim.kernels.synth import fill_normal

from .reference import ref_mvm

IDEAL = ["xbar.weight_bits=20", "xbar.cell_bits=20", "dac.input_bits=20", "dac.bits=20",
         "adc.bits=48", "xbar.rows=64"]


def hw(*sets):
    return timesim.load_hwconfig(None, list(sets))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 6), rows=st.integers(1, 200), cols=st.integers(1, 30),
       seed=st.integers(0, 2**31), pair=st.sampled_from([1, 2]))
def test_ideal_settings_equal_the_matmul(B, rows, cols, seed, pair):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, rows)).astype(np.float32)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    y = mvm(x, w, hw(*IDEAL, f"xbar.cells_per_weight={pair}"))
    ref = x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(y - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def noise_source(seed):
    return lambda stream, shape: adc_noise(seed, stream, shape)


def test_adc_noise_is_the_synthetic_generator():
    """kernels/mvm.py repeats the counter-based normal of kernels/synth.py (numba cache rule);
    both must give the same values."""
    for seed, stream in ((0, 0), (5, 3), (2**40, 17)):
        np.testing.assert_array_equal(adc_noise(seed, stream, (7, 33)),
                                      fill_normal(np.empty((7, 33), np.float32), seed, stream))


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 5), rows=st.integers(1, 300), cols=st.integers(1, 20),
       seed=st.integers(0, 2**31), wb=st.integers(2, 9), cb=st.integers(1, 6),
       ib=st.integers(1, 9), db=st.integers(1, 9), ab=st.integers(2, 12),
       xr=st.sampled_from([8, 32, 128]), rng_=st.sampled_from([1.0, 0.5, 0.1]),
       pair=st.sampled_from([1, 2]), noisy=st.booleans(), faults=st.booleans())
def test_quantized_mvm_matches_the_reference_exactly(B, rows, cols, seed, wb, cb, ib, db, ab,
                                                     xr, rng_, pair, noisy, faults):
    db = min(db, ib)
    h = hw(f"xbar.weight_bits={wb}", f"xbar.cell_bits={cb}", f"dac.input_bits={ib}",
           f"dac.bits={db}", f"adc.bits={ab}", f"xbar.rows={xr}", f"adc.range={rng_}",
           f"xbar.cells_per_weight={pair}", f"adc.read_noise={0.01 if noisy else 0}",
           "adc.cols_per_adc=1")
    r = np.random.default_rng(seed)
    x = r.standard_normal((B, rows)).astype(np.float32)
    x[r.random((B, rows)) < 0.2] = 0
    w = r.standard_normal((rows, cols)).astype(np.float32)
    stuck = r.choice([0, 0, 0, SA0, SA1], size=(rows, cols)).astype(np.int8) if faults else None
    y = mvm(x, w, h, stuck, seed=seed % 1000)
    want = ref_mvm(x, w, h, stuck, noise_source(seed % 1000))
    np.testing.assert_array_equal(y, want)


def test_stuck_cells_read_as_their_bounds():
    h = hw(*IDEAL)
    x = np.eye(3, dtype=np.float32)
    w = np.array([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]], np.float32)
    stuck = np.array([[SA0, 0], [0, SA1], [0, 0]], np.int8)
    y = mvm(x, w, h, stuck)
    # differential pair: every cell of a stuck weight at the same bound -> the pair reads 0
    np.testing.assert_allclose(y, [[0, -2], [3, 0], [-5, 6]], atol=1e-4)
    h1 = hw(*IDEAL, "xbar.cells_per_weight=1")
    y1 = mvm(x, w, h1, stuck)
    # offset column: SA0 reads the most negative weight, SA1 the most positive
    wmax = 6.0
    assert y1[0, 0] == pytest.approx(-wmax * 2**20 / (2**20 - 1), rel=1e-4)
    # SA1 sets every slice of the offset-coded weight to its top level: (2^40 - 1) - 2^20 steps
    assert y1[1, 1] == pytest.approx(wmax * (2**40 - 1 - 2**20) / (2**20 - 1), rel=1e-4)


def test_programming_variation_and_read_noise_are_seeded():
    r = np.random.default_rng(0)
    x = r.standard_normal((4, 100)).astype(np.float32)
    w = r.standard_normal((100, 10)).astype(np.float32)
    h = hw("xbar.program_sigma=0.05", "adc.read_noise=0.01")
    a, b, c = mvm(x, w, h, seed=1), mvm(x, w, h, seed=1), mvm(x, w, h, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    clean = mvm(x, w, hw(*IDEAL))
    noisy = mvm(x, w, hw(*IDEAL, "xbar.program_sigma=0.05"), seed=1)
    err = np.linalg.norm(noisy - clean) / np.linalg.norm(clean)
    assert 0.005 < err < 0.2


def test_programmed_crossbar_reuses_its_weights():
    r = np.random.default_rng(1)
    w = r.standard_normal((300, 20)).astype(np.float32)
    p = program(w, hw())
    assert len(p.units) == 3 and p.slices == 2                 # 128-row blocks, 8b in 5b cells
    x = r.standard_normal((7, 300)).astype(np.float32)
    np.testing.assert_array_equal(p.mvm(x), mvm(x, w, hw()))


def test_wearout_faults_follow_writes_endurance_and_rowmap():
    writes = np.array([[5, 0], [11, 12], [3, 20]])
    rowmap = np.array([2, 0, 1])                     # logical r on physical rowmap[r]
    st = wearout_faults(writes, 10, rowmap, 1.0, 0, 0)
    assert st.tolist() == [[0, SA1], [0, 0], [SA1, SA1]]
    st0 = wearout_faults(writes, 10, rowmap, 0.0, 0, 0)
    assert (st0[st > 0] == SA0).all()
    big = wearout_faults(np.full((400, 500), 9), 5, np.arange(400), 0.84, 3, 1)
    assert abs((big == SA1).mean() - 0.84) < 0.01


def test_evaluate_model_and_bad_inputs():
    r = np.random.default_rng(2)
    layers = [(r.standard_normal((8, 6)).astype(np.float32), np.ones(6, np.float32)),
              (r.standard_normal((6, 3)).astype(np.float32), None)]
    x = r.standard_normal((4, 8)).astype(np.float32)
    y = evaluate_model(layers, x, hw(*IDEAL))
    want = np.maximum(x @ layers[0][0] + 1, 0) @ layers[1][0]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(SimulationError, match="x must be"):
        mvm(np.zeros((2, 5), np.float32), layers[0][0], hw())
    with pytest.raises(SimulationError, match="stuck must be"):
        mvm(x, layers[0][0], hw(), stuck=np.full((8, 6), 7, np.int8))
    assert timesim.analog.mvm is mvm

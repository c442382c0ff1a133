"""Analog MVM against x @ W (ideal settings) and the numpy reference (quantized), and faults."""

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import timesim
from timesim.analog import SA0, SA1, evaluate_model, mvm, program, wearout_faults
from timesim.errors import SimulationError
from timesim.kernels.mvm import noise as adc_noise
from timesim.mapping import cells_per_weight

from .reference import ref_mvm, ref_noise

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


def test_read_noise_is_the_documented_generator():
    """The kernel's read-noise normals equal a numpy implementation of docs/analog.md's
    generator, including odd batch sizes (the last row takes the low half of its pair)."""
    for seed, stream, B, W in ((0, 0, 7, 33), (5, 3, 1, 5), (2**40, 17, 10, 300)):
        np.testing.assert_array_equal(adc_noise(seed, stream, B, W),
                                      ref_noise(seed, stream, B, W))


def test_read_noise_is_standard_normal_and_independent():
    """Irwin-Hall of four bytes: mean 0, variance 1, excess kurtosis -0.3 (theory: -1.2/4 for
    a sum of 4 uniforms); no correlation between neighbours, the two halves of a pair, row
    blocks (streams) or seeds."""
    z = adc_noise(11, 0, 2000, 1000).astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 0.01
    assert abs(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3 + 0.3) < 0.03
    assert np.abs(z).max() <= 510 / np.sqrt(21845) + 1e-6
    for a, b in ((z[:, :-1], z[:, 1:]), (z[0::2], z[1::2]),
                 (z, adc_noise(11, 1, 2000, 1000)), (z, adc_noise(12, 0, 2000, 1000))):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)


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
    want = ref_mvm(x, w, h, stuck, seed % 1000)
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


def test_programming_variation_error_matches_the_cell_model():
    """The mean squared relative error over seeds against the documented cell model (analog.py
    steps 1-2) evaluated independently: per cell G = (Gmin + level)(1 + sigma z) clipped to
    [Gmin, Gmax], both cells of the differential pair (the off cell's half-normal pushes every
    weight toward zero); per weight the mean and variance of the programmed value by Monte
    Carlo in numpy, then E|x @ dW|^2 = sum x^2 var + (x @ mean)^2."""
    r = np.random.default_rng(0)
    x = r.standard_normal((4, 100))
    w = r.standard_normal((100, 10)).astype(np.float32)
    sigma = 0.05
    h = hw(*IDEAL, f"xbar.program_sigma={sigma}")
    clean = mvm(x.astype(np.float32), w, hw(*IDEAL)).astype(np.float64)
    measured = np.mean([np.sum((mvm(x.astype(np.float32), w, h, seed=s) - clean) ** 2)
                        for s in range(24)]) / np.sum(clean ** 2)
    L1 = 2**20 - 1                                    # 20-bit weights in one 20-bit cell
    gmin, gmax = 1 / h.xbar.r_off_ohm, 1 / h.xbar.r_on_ohm
    g0 = gmin / ((gmax - gmin) / L1)                  # Gmin in level units (L1 / 9 here)
    scale = np.abs(w.astype(np.float64)).max() / L1
    q = np.rint(w / scale)
    z = np.random.default_rng(1).standard_normal((2, 4000, *w.shape))

    def level(m, zz):
        return np.clip((g0 + m) * (1 + sigma * zz), g0, g0 + L1) - g0

    programmed = scale * (level(np.maximum(q, 0), z[0]) - level(np.maximum(-q, 0), z[1]))
    mean, var = programmed.mean(0) - scale * q, programmed.var(0)
    expected = (np.sum(x ** 2 @ var) + np.sum((x @ mean) ** 2)) / np.sum(clean ** 2)
    # 24 seeds x 40 outputs: the estimate's relative standard error is about 5%
    assert measured == pytest.approx(expected, rel=0.15)


def test_programmed_crossbar_reuses_its_weights():
    r = np.random.default_rng(1)
    w = r.standard_normal((300, 20)).astype(np.float32)
    x = r.standard_normal((7, 300)).astype(np.float32)
    p = program(w, hw(), calib=x)
    assert p.blocks == 3 and p.slices == 2                     # 128-row blocks, 8b in 5b cells
    np.testing.assert_array_equal(p.mvm(x), mvm(x, w, hw()))   # mvm calibrates on x itself
    # programmed once (calibrated on the input model), it serves any input
    q = program(w, hw())
    np.testing.assert_array_equal(q.mvm(x[:3]), q.mvm(x)[:3])


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 5), rows=st.integers(1, 300), cols=st.integers(1, 20),
       seed=st.integers(0, 2**31), pair=st.sampled_from([1, 2]), noisy=st.booleans(),
       faults=st.booleans(), ab=st.integers(3, 9))
def test_calibrated_adcs_match_the_reference_exactly(B, rows, cols, seed, pair, noisy, faults,
                                                     ab):
    h = hw("adc.range=auto", f"xbar.cells_per_weight={pair}", f"adc.bits={ab}",
           f"adc.read_noise={0.001 if noisy else 0}")
    r = np.random.default_rng(seed)
    x = r.standard_normal((B, rows)).astype(np.float32)
    w = r.standard_normal((rows, cols)).astype(np.float32)
    stuck = r.choice([0, 0, 0, SA0, SA1], size=(rows, cols)).astype(np.int8) if faults else None
    p = program(w, h, stuck, seed % 1000, calib=x)
    assert p.steps.shape == (8, 2)
    np.testing.assert_array_equal(p.mvm(x, seed % 1000),
                                  ref_mvm(x, w, h, stuck, seed % 1000, steps=p.steps))


def test_calibration_picks_the_mse_optimal_clip():
    from timesim.analog import _mse_step

    r = np.random.default_rng(3)
    cur = np.round(r.standard_normal(20000) * 40)
    levels = 31
    best = _mse_step(cur, levels)

    def err(d):
        return np.mean((np.clip(np.rint(cur / d), -levels, levels) * d - cur) ** 2)

    # no step on a fine grid does better than the chosen one by more than the grid allows
    grid = np.linspace(0.5, 10, 400)
    assert err(best) <= min(err(d) for d in grid) * 1.02
    # all-zero sums: any step; integer sums that fit: step 1 or finer converts them exactly
    assert _mse_step(np.zeros(5), levels) == 1.0
    small = np.array([-3.0, 0, 2, 5, 31])
    d = _mse_step(small, levels)
    assert np.array_equal(np.clip(np.rint(small / d), -levels, levels) * d, small)


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


@pytest.mark.parametrize("pair,ib,db", [(2, 8, 8), (1, 6, 2)])
def test_every_execution_path_matches_the_reference(monkeypatch, pair, ib, db):
    """Several column chunks (cols > 256), a short last row block, an odd batch, noise and
    faults: numba's threads, one thread, and np.matmul from Python (a BLAS kernels/blas.py
    cannot call) all give the reference's result bit for bit."""
    import timesim.analog as analog
    import timesim.kernels.blas as blas

    h = hw(f"xbar.cells_per_weight={pair}", f"dac.input_bits={ib}", f"dac.bits={db}",
           "adc.bits=9", "adc.range=0.1", "adc.read_noise=0.02")
    r = np.random.default_rng(21)
    x = np.maximum(r.standard_normal((17, 300)), 0).astype(np.float32)
    w = r.standard_normal((300, 600)).astype(np.float32)
    stuck = r.choice([0] * 18 + [SA0, SA1], size=w.shape).astype(np.int8)
    p = program(w, h, stuck)
    assert len(p.edges) - 1 >= 3
    want = ref_mvm(x, w, h, stuck, 5)
    got = {"parallel": p.mvm(x, 5)}
    monkeypatch.setattr(analog, "_PARALLEL_WORK", 1 << 62)
    got["serial"] = p.mvm(x, 5)
    monkeypatch.setattr(blas, "_handle", False)
    got["numpy"] = p.mvm(x, 5)
    for path, y in got.items():
        np.testing.assert_array_equal(y, want, err_msg=path)


@pytest.mark.parametrize("sets,packed", [
    ((), (4, 8192.0)),                                   # default: F = 128·1·31 = 3968
    (("dac.input_bits=6",), (4, 8192.0)),                # 6 slices: groups of 4 and 2
    (("xbar.cell_bits=8",), (1, 65536.0)),               # F = 32640: P = 3, not worth it
    (("xbar.rows=1024", "xbar.cell_bits=8"), (1, 524288.0)),   # F·(1 + b + b²) > 2^53
    (("xbar.program_sigma=0.02",), (1, 8192.0))])        # non-integer conductances
def test_bit_serial_inputs_packed_into_float64_give_the_reference_bit_for_bit(monkeypatch, sets,
                                                                              packed):
    """Several 1-bit input slices ride in one float64 product (base 2^ceil(log2(2F + 1)), as
    many slices P as keep F·(1 + base + ... + base^(P−1)) under 2^53): hand-computed P and
    base, and the result equals the reference and the unpacked sgemm path bit for bit (odd
    batch, several column chunks, a short last row block, read noise, per-cell faults)."""
    import timesim.kernels.blas as blas

    if blas.sgemm_handle() is None or not blas.sgemm_handle().dgemm:
        pytest.skip("numpy's BLAS is not one kernels/blas.py can call")
    h = hw(*sets, "adc.range=0.02", "adc.read_noise=0.003")
    r = np.random.default_rng(len(sets) + 31)
    rows = 200 if h.xbar.rows == 128 else 1100
    x = r.standard_normal((131, rows)).astype(np.float32)
    w = r.standard_normal((rows, 300)).astype(np.float32)
    sides, slices = cells_per_weight(h)
    stuck = r.choice([0] * 18 + [SA0, SA1], size=(sides * slices, rows, 300)).astype(np.int8)
    p = program(w, h, stuck, seed=3)
    assert (p.pack, p.pack_base) == packed
    got = p.mvm(x, 6)
    p.pack = 1
    np.testing.assert_array_equal(p.mvm(x, 6), got)
    if h.xbar.program_sigma == 0:
        np.testing.assert_array_equal(got, ref_mvm(x, w, h, stuck, 6))
        for B, n, m in ((1, 33, 2), (3, 128, 1), (2, 129, 3)):     # tiny BLAS calls too
            xs, ws = x[:B, :n], w[:n, :m]
            np.testing.assert_array_equal(program(ws, h).mvm(xs, 6), ref_mvm(xs, ws, h, None, 6))


def test_the_parallel_path_is_taken_and_threads_do_not_change_results(monkeypatch):
    """With programming variation (non-integer conductances) results still do not depend on
    numba's thread count: chunks are fixed by the column count alone."""
    import numba

    import timesim.analog as analog
    import timesim.kernels.blas as blas

    if blas.sgemm_handle() is None:
        pytest.skip("numpy's BLAS is not one kernels/blas.py can call")
    threads = []
    run = analog._mvm_run
    monkeypatch.setattr(analog, "_mvm_run",
                        lambda *a: threads.append(numba.get_num_threads()) or run(*a))
    h = hw("xbar.program_sigma=0.02", "adc.read_noise=0.0001", "adc.bits=12", "adc.range=0.1")
    r = np.random.default_rng(3)
    x = r.standard_normal((64, 512)).astype(np.float32)
    w = r.standard_normal((512, 520)).astype(np.float32)
    p = program(w, h, seed=4)
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = p.mvm(x, 9)
    finally:
        numba.set_num_threads(n)
    np.testing.assert_array_equal(p.mvm(x, 9), one)
    program(w[:, :50], h).mvm(x[:1], 9)                   # small: one thread
    assert threads == [1, n, 1]
    assert np.linalg.norm(one - x @ w) / np.linalg.norm(x @ w) < 0.15


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_and_weights_are_refused(bad):
    r = np.random.default_rng(0)
    w = r.standard_normal((40, 6)).astype(np.float32)
    x = r.standard_normal((3, 40)).astype(np.float32)
    x[1, 7] = bad
    with pytest.raises(SimulationError, match="x has NaN or Inf"):
        mvm(x, w, hw())
    w[3, 2] = bad
    with pytest.raises(SimulationError, match="w has NaN or Inf"):
        mvm(x[:1] * 0, w, hw())
    with pytest.raises(SimulationError, match=r"x must be \(batch, 40\)"):
        mvm(x[:, :39], np.ones((40, 6), np.float32), hw())


def test_an_empty_batch_gives_an_empty_result_and_a_vector_a_vector():
    r = np.random.default_rng(4)
    w = r.standard_normal((10, 4)).astype(np.float32)
    assert mvm(np.zeros((0, 10), np.float32), w, hw()).shape == (0, 4)
    x = r.standard_normal(10).astype(np.float32)
    h = hw("adc.read_noise=0.01")
    np.testing.assert_array_equal(mvm(x, w, h, seed=3), mvm(x[None], w, h, seed=3)[0])


def test_concurrent_mvms_agree_and_leave_blas_threads_as_they_were():
    """MVMs from several Python threads at once (numba's OpenMP layer takes concurrent
    launches) give the single-threaded result, and numpy's BLAS gets its thread count back."""
    from concurrent.futures import ThreadPoolExecutor

    import timesim.kernels.blas as blas

    h = blas.sgemm_handle()
    if h is None:
        pytest.skip("numpy's BLAS is not one kernels/blas.py can call")
    before = h.get_threads()
    r = np.random.default_rng(8)
    x = r.standard_normal((96, 400)).astype(np.float32)
    w = r.standard_normal((400, 300)).astype(np.float32)
    p = program(w, hw("adc.read_noise=0.01"))
    want = p.mvm(x, 2)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda _: p.mvm(x, 2), range(12)))
    for y in got:
        np.testing.assert_array_equal(y, want)
    assert h.get_threads() == before


def test_concurrent_mvms_under_numbas_workqueue_layer():
    """Where neither OpenMP nor TBB is installed numba falls back to its workqueue layer, which
    aborts the process on concurrent launches: analog.py then launches one MVM at a time."""
    import subprocess
    import sys

    script = (
        "import numpy as np, numba, timesim\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from timesim.analog import program\n"
        "r = np.random.default_rng(1)\n"
        "x = r.standard_normal((128, 512)).astype(np.float32)\n"
        "p = program(r.standard_normal((512, 384)).astype(np.float32),\n"
        "            timesim.load_hwconfig(None, ['adc.read_noise=0.01']))\n"
        "want = p.mvm(x, 3)\n"
        "with ThreadPoolExecutor(4) as ex:\n"
        "    got = list(ex.map(lambda _: p.mvm(x, 3), range(8)))\n"
        "assert all((g == want).all() for g in got)\n"
        "print(numba.threading_layer())\n")
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "workqueue"


def test_blas_symbols_are_trusted_only_where_their_integer_width_is_known():
    from types import SimpleNamespace as NS

    from timesim.kernels.blas import _inside_numpy, _plain_is_lp64

    assert _plain_is_lp64(NS(internal_api="openblas", filepath="/usr/lib/libopenblas.so.0"))
    assert not _plain_is_lp64(NS(internal_api="openblas", filepath="/usr/lib/libopenblas64_.so"))
    assert not _plain_is_lp64(NS(internal_api="blis", filepath="/usr/lib/libblis.so.4"))
    assert _plain_is_lp64(NS(internal_api="mkl", filepath="/opt/libmkl_rt.so.2"))
    site = os.path.join(os.sep, "venv", "site-packages")
    assert _inside_numpy(os.path.join(site, "numpy.libs", "libscipy_openblas64_.so"), site)
    assert not _inside_numpy(os.path.join(site, "scipy.libs", "libscipy_openblas.so"), site)


def _rel(y, ref):
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("seed", [0, 1])
def test_default_chip_computes_right(seed):
    """Issue 12's cases on the default chip (calibrated ADCs) against x @ W in float64."""
    r = np.random.default_rng(seed)
    h = timesim.load_hwconfig()
    assert h.adc.range == "auto"
    w = (r.standard_normal((512, 512)) * 0.1).astype(np.float32)
    x = r.random((128, 512)).astype(np.float32)
    assert _rel(mvm(x, w, h), x.astype(np.float64) @ w) <= 0.05
    w = (r.standard_normal((300, 70)) * 0.1).astype(np.float32)
    x = r.uniform(-1, 1, (128, 300)).astype(np.float32)
    assert _rel(mvm(x, w, h), x.astype(np.float64) @ w) <= 0.05
    # the first round's single full-scale range: most codes round to 0
    assert _rel(mvm(x, w, hw("adc.range=1.0")), x.astype(np.float64) @ w) > 0.5


def _trained_digits(name, iterations=1500):
    pytest.importorskip("torch")
    from timesim.examples.digits import load_digits_split, train

    _, _, x_te, y_te = load_digits_split(0)
    return train(name, iterations=iterations).net, x_te, y_te


def test_default_chip_keeps_digits_accuracy():
    pytest.importorskip("torch")
    from timesim.pytorch import crossbar_forward

    for cls in ("mlp", "lenet"):
        model, x_te, y_te = _trained_digits(cls)
        digital = float((model(x_te).argmax(1) == y_te).float().mean())
        analog = float((crossbar_forward(model, x_te, timesim.load_hwconfig()).argmax(1)
                        == y_te).float().mean())
        assert digital > 0.9 and analog >= digital - 0.01, (cls, digital, analog)


def test_read_noise_is_absolute():
    """adc.read_noise is a fraction of the largest column current: with the same noise, a
    narrower ADC range sees more codes of noise, not fewer."""
    r = np.random.default_rng(4)
    w = (r.standard_normal((128, 32)) * 0.1).astype(np.float32)
    x = r.random((64, 128)).astype(np.float32)
    ref = x.astype(np.float64) @ w
    err = {}
    for rng_ in (1.0, 0.1):
        clean = mvm(x, w, hw(f"adc.range={rng_}", "adc.bits=12"))
        noisy = mvm(x, w, hw(f"adc.range={rng_}", "adc.bits=12", "adc.read_noise=0.001"),
                    seed=2)
        err[rng_] = _rel(noisy, clean)
    # the same absolute noise sigma = 0.001 F (F: the largest column current) on both; each
    # difference of two ADC codes adds two quantization errors of variance step^2 / 12, step =
    # range x F / (2^11 - 1): err^2 is proportional to sigma^2 + step^2 / 6
    sig2 = 0.001**2
    want = math.sqrt((sig2 + (1.0 / 2047) ** 2 / 6) / (sig2 + (0.1 / 2047) ** 2 / 6))  # 1.0195
    assert err[1.0] / err[0.1] == pytest.approx(want, rel=0.01)
    assert _rel(mvm(x, w, hw("adc.bits=12", "adc.range=0.1")), ref) < 0.05


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 4), rows=st.integers(1, 200), cols=st.integers(1, 12),
       seed=st.integers(0, 2**31), pair=st.sampled_from([1, 2]))
def test_per_cell_faults_match_the_reference(B, rows, cols, seed, pair):
    h = hw(f"xbar.cells_per_weight={pair}", "adc.range=0.5", "adc.bits=10")
    r = np.random.default_rng(seed)
    x = r.standard_normal((B, rows)).astype(np.float32)
    w = r.standard_normal((rows, cols)).astype(np.float32)
    cells = 2 * pair if pair == 2 else 2          # 8-bit weights in 5-bit cells: 2 slices
    stuck = r.choice([0, 0, 0, SA0, SA1], size=(cells, rows, cols)).astype(np.int8)
    np.testing.assert_array_equal(mvm(x, w, h, stuck), ref_mvm(x, w, h, stuck))


def test_a_pair_with_one_cell_stuck_is_pinned_not_zeroed():
    from timesim.analog import cells_per_weight

    h = hw(*IDEAL)                           # 20-bit weights in one 20-bit cell per side
    sides, S = cells_per_weight(h)
    assert (sides, S) == (2, 1)
    w = np.array([[0.5, 0.1, -0.25]], np.float32)
    x = np.ones((1, 1), np.float32)
    stuck = np.zeros((2, 1, 3), np.int8)
    stuck[0, 0, 1] = SA1                    # weight 0.1: G+ stuck at Gmax, G- working (0)
    stuck[1, 0, 2] = SA1                    # weight -0.25: G- stuck at Gmax, G+ working (0)
    y = mvm(x, w, h, stuck)[0]
    np.testing.assert_allclose(y, [0.5, 0.5, -0.5], rtol=1e-4)       # pinned to +-max|W|
    # the per-weight mask (every cell at the bound): the pair reads 0
    y0 = mvm(x, w, h, np.array([[0, SA1, SA1]], np.int8))[0]
    np.testing.assert_allclose(y0, [0.5, 0, 0], atol=1e-6)


def test_cell_wear_follows_writes_endurance_and_draws_per_cell():
    from timesim.analog import cell_wear

    h = hw("endurance.cycles=10", "endurance.sa1_fraction=0.84")
    writes = np.array([[5, 11], [20, 0]], np.int64)
    wear = cell_wear(writes, h, layer=0, rowmap=np.array([1, 0]))
    # logical row 0 sits on physical row 1: writes [20, 0]; row 1 on physical row 0: [5, 11]
    failed = wear.stuck != 0
    assert failed.shape == (4, 2, 2)
    assert failed[:, 0, 0].all() and not failed[:, 0, 1].any()
    assert not failed[:, 1, 0].any() and failed[:, 1, 1].all()
    big = cell_wear(np.full((300, 400), 20), h, layer=3)
    assert big.failed_fraction == 1.0
    assert (big.stuck == SA1).mean() == pytest.approx(0.84, abs=0.01)
    # the four cells of a weight draw apart: some weights have both SA0 and SA1 cells
    mixed = ((big.stuck == SA1).any(axis=0) & (big.stuck == SA0).any(axis=0)).mean()
    assert mixed == pytest.approx(1 - 0.84**4 - 0.16**4, abs=0.02)
    # lognormal endurance per cell: cells of one weight fail at different write counts
    hs = hw("endurance.cycles=100", "endurance.sigma=0.5")
    part = cell_wear(np.full((200, 200), 100), hs, layer=0)
    assert 0.3 < part.failed_fraction < 0.7
    split = (part.stuck != 0).any(axis=0) & (part.stuck == 0).any(axis=0)
    assert split.mean() > 0.5


def test_gradual_wear_narrows_the_window_before_failure():
    from timesim.analog import cell_wear

    h = hw("endurance.cycles=1000", "endurance.mode=gradual", "endurance.gradual_onset=0.1")
    L1 = 2**h.xbar.cell_bits - 1
    writes = np.array([[0, 100, 300, 999, 1001]], np.int64)
    wear = cell_wear(writes, h, layer=0)
    lo, hi = wear.window[0, 0, 0], wear.window[1, 0, 0]
    assert lo[0] == pytest.approx(0) and hi[0] == pytest.approx(L1)        # fresh
    assert lo[1] == pytest.approx(0) and hi[1] == pytest.approx(L1)        # at the onset
    assert 0 < lo[2] < lo[3] and hi[3] < hi[2] < L1                        # narrowing
    # at E both ends reach the convergence resistance (r_on + r_off) / 2
    gmin, gmax = 1 / h.xbar.r_off_ohm, 1 / h.xbar.r_on_ohm
    mid = (2 / (h.xbar.r_on_ohm + h.xbar.r_off_ohm) - gmin) / ((gmax - gmin) / L1)
    assert lo[3] == pytest.approx(mid, rel=0.01) and hi[3] == pytest.approx(mid, rel=0.01)
    assert wear.stuck[0, 0, 4] != 0 and (wear.stuck[:, 0, :4] == 0).all()
    # a narrowed window costs accuracy before any cell has failed
    r = np.random.default_rng(0)
    w = (r.standard_normal((128, 64)) * 0.1).astype(np.float32)
    x = r.random((32, 128)).astype(np.float32)
    ref = x.astype(np.float64) @ w
    fresh = _rel(mvm(x, w, h), ref)
    worn = cell_wear(np.full((128, 64), 500), h, layer=0)
    assert worn.failed_fraction == 0
    assert _rel(mvm(x, w, h, worn), ref) > fresh + 0.05


def test_worn_cells_pin_weights_and_gradual_wear_costs_accuracy_before_failures():
    """Issue 12's targets on the digits MLP: 20% of physical cells stuck (84% SA1) takes the
    accuracy below 0.6 (pinned weights; the old per-weight model zeroed them and kept 0.97);
    with gradual wear the accuracy drops before any cell has failed."""
    pytest.importorskip("torch")
    from timesim.analog import cell_wear, cells_per_weight
    from timesim.pytorch import crossbar_forward, weight_to_matrix

    model, x_te, y_te = _trained_digits("mlp")
    h = timesim.load_hwconfig()

    def acc(out):
        return float((out.argmax(1) == y_te).float().mean())

    sides, S = cells_per_weight(h)
    r = np.random.default_rng(0)
    per_cell, per_weight = {}, {}
    for name in ("fc1", "fc2", "fc3"):
        shape = (sides * S,) + weight_to_matrix(getattr(model, name).weight).shape
        st = np.where(r.random(shape) < 0.2, np.where(r.random(shape) < 0.84, SA1, SA0), 0)
        per_cell[name] = st.astype(np.int8)
        per_weight[name] = per_cell[name][0]
    assert acc(crossbar_forward(model, x_te, h, per_cell)) < 0.6
    assert acc(crossbar_forward(model, x_te, h, per_weight)) > 0.9
    g = timesim.load_hwconfig(None, ["endurance.mode=gradual", "endurance.cycles=1000"])
    fresh = acc(crossbar_forward(model, x_te, g))
    wear = {name: cell_wear(np.full(weight_to_matrix(getattr(model, name).weight).shape, 500),
                            g, i) for i, name in enumerate(("fc1", "fc2", "fc3"))}
    assert all(w.failed_fraction == 0 for w in wear.values())
    assert acc(crossbar_forward(model, x_te, g, wear)) < fresh - 0.05

"""Policy kernels against the numpy reference (tests/reference.py), random and crafted inputs."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timesim.kernels.convert import to_float32
from timesim.policies import LayerPolicy, topk_count
from timesim.trace.format import LayerInfo
from timesim.trace.writer import float32_to_bfloat16_bits

from .conftest import make_hw, random_grads
from .reference import bfloat16_bits_to_value, float16_bits_to_value, run_reference

SELECTIONS = ["dense", "topk", "sgs-row", "sgs-element", "sgs"]


def run_kernel(G, hw, chunk=3):
    layer = LayerInfo(name="L", kind="linear", rows=G.shape[1], cols=G.shape[2])
    pol = LayerPolicy(layer, hw)
    selected = []
    for t0 in range(0, G.shape[0], chunk):
        part = np.ascontiguousarray(G[t0:t0 + chunk])
        pol.process(part, t0)
        if pol.selection != "dense":
            selected.extend(pol.selected[:part.shape[0]].tolist())
    pol.finish()
    return pol, selected


def assert_same(pol, ref, selected):
    np.testing.assert_array_equal(pol.writes, ref.writes)
    np.testing.assert_array_equal(pol.counters, ref.counters)
    np.testing.assert_array_equal(pol.l2p, np.array(ref.l2p))
    assert pol.policy_cell_writes == ref.policy_cells
    assert pol.swaps == ref.swaps
    assert pol.ars_cells == ref.ars_cells
    assert pol.max_writes == ref.writes.max()
    if ref.selected:
        assert selected == ref.selected


def compare(G, selection, wl, interval, R, block_rows, rct, density, chunk=3, seed=0):
    hw = make_hw(selection, wl, interval, R, block_rows, rct, density, seed=seed)
    pol, selected = run_kernel(G, hw, chunk)
    ref = run_reference(G, selection, rct=rct, density=density, wear_leveling=wl,
                        interval=interval, R=R, block_rows=block_rows, seed=seed)
    assert_same(pol, ref, selected)
    return pol


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 24), rows=st.integers(1, 30),
       cols=st.integers(1, 9), selection=st.sampled_from(SELECTIONS),
       wl=st.sampled_from(["none", "ars", "ars-random"]), interval=st.integers(1, 5),
       R=st.integers(1, 10), rseed=st.integers(0, 2**40),
       block_rows=st.integers(1, 12), rct=st.integers(1, 20),
       density=st.sampled_from([0.01, 0.1, 0.25, 0.5, 1.0]),
       style=st.sampled_from(["normal", "ties", "hot-row"]), chunk=st.integers(1, 7))
def test_kernels_match_reference_on_random_traces(seed, T, rows, cols, selection, wl, interval,
                                                  R, rseed, block_rows, rct, density, style,
                                                  chunk):
    G = random_grads(np.random.default_rng(seed), T, rows, cols, style)
    compare(G, selection, wl, interval, R, block_rows, rct, density, chunk, rseed)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_rows_not_a_multiple_of_xbar_rows_with_ars(selection):
    G = random_grads(np.random.default_rng(1), 40, 21, 5, "normal")
    pol = compare(G, selection, "ars", 3, 4, 8, 10, 0.1)
    if selection != "dense":
        assert pol.swaps > 0


def test_layer_with_fewer_rows_than_R():
    G = random_grads(np.random.default_rng(2), 30, 3, 4, "hot-row")
    pol = compare(G, "sgs-row", "ars", 2, 32, 128, 1, 0.1)
    assert pol.swaps > 0          # h = min(R/2, floor(3/2)) = 1 pair per ARS


def test_one_row_always_wins_and_ars_spreads_it():
    rows, T = 16, 64
    G = random_grads(np.random.default_rng(3), T, rows, 4, "hot-row")
    none = compare(G, "sgs-row", "none", 8, 4, 16, 1, 0.1)
    assert none.writes[rows // 2].tolist() == [T] * 4       # every write on the hot row
    assert none.writes.sum() == T * 4
    ars = compare(G, "sgs-row", "ars", 8, 4, 16, 1, 0.1)
    assert ars.max_writes < none.max_writes


def test_ties_resolve_to_lowest_index():
    G = np.zeros((3, 4, 3), np.float32)                      # all zero: every magnitude ties
    pol = compare(G, "sgs-row", "none", 4, 4, 8, 1, 0.1)
    assert pol.selected[:3].tolist() == [0, 0, 0]
    G = np.zeros((1, 3, 3), np.float32)
    G[0, 1, 2] = -5.0
    G[0, 2, 0] = 5.0                                          # |−5| == |5|: lower row-major wins
    pol = compare(G, "sgs-element", "none", 4, 4, 8, 1, 0.1)
    assert pol.selected[0] == 1 * 3 + 2
    G = np.ones((1, 2, 4), np.float32)                        # topk: 3 of 8 equal -> first 3
    pol = compare(G, "topk", "none", 4, 4, 8, 1, 3 / 8)
    assert pol.writes.ravel().tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_hybrid_sgs_uses_rct():
    G = random_grads(np.random.default_rng(4), 5, 6, 3, "normal")
    elem = compare(G, "sgs", "none", 4, 4, 8, 7, 0.1)        # 6 rows < RCT 7
    row = compare(G, "sgs", "none", 4, 4, 8, 6, 0.1)         # 6 rows >= RCT 6
    assert elem.selection == "sgs-element" and elem.policy_cell_writes == 5
    assert row.selection == "sgs-row" and row.policy_cell_writes == 15


def test_topk_count_rounds_half_to_even():
    assert topk_count(0.5, 5) == 2            # round(2.5) = 2
    assert topk_count(0.5, 7) == 4            # round(3.5) = 4
    assert topk_count(0.001, 100) == 1        # max(1, round(0.1))
    assert topk_count(1.0, 9) == 9


def test_dense_with_ars_writes_every_cell_every_iteration():
    G = random_grads(np.random.default_rng(5), 17, 9, 4, "normal")
    pol = compare(G, "dense", "ars", 2, 4, 4, 1, 0.1)
    assert (pol.writes == 17).all() and pol.swaps == 0


def test_nonfinite_gradient_is_an_error_naming_layer_and_iteration():
    from timesim.errors import TraceError
    G = random_grads(np.random.default_rng(6), 6, 4, 4, "normal")
    G[4, 2, 1] = np.nan
    hw = make_hw("sgs-row")
    with pytest.raises(TraceError, match="layer L: iteration 4"):
        run_kernel(G, hw, chunk=6)


def test_float16_decoding_matches_the_formula_for_every_pattern():
    bits = np.arange(65536, dtype=np.uint16)
    got = to_float32(bits.reshape(1, 256, 256), "float16").ravel()
    want = np.array([float16_bits_to_value(int(b)) for b in bits])
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan], want[~nan].astype(np.float32))
    np.testing.assert_array_equal(got, bits.view(np.float16).astype(np.float32))


def test_bfloat16_decoding_and_rounding():
    bits = np.arange(65536, dtype=np.uint16)
    got = to_float32(bits.reshape(1, 256, 256), "bfloat16").ravel()
    want = np.array([bfloat16_bits_to_value(int(b)) for b in bits])
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan], want[~nan].astype(np.float32))
    # float32 -> bfloat16 rounds to nearest, ties to even
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-9, -2.5], np.float32)
    back = to_float32(float32_to_bfloat16_bits(x).reshape(1, 1, -1), "bfloat16").ravel()
    np.testing.assert_array_equal(back, [1.0, 1.0, 1.0 + 2**-6, 1.0, -2.5])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_match_reference_on_decoded_values(dtype):
    rng = np.random.default_rng(7)
    G32 = random_grads(rng, 12, 10, 6, "normal")
    if dtype == "float16":
        stored = G32.astype(np.float16)
        decoded = stored.astype(np.float32)
    else:
        stored = float32_to_bfloat16_bits(G32)
        decoded = np.vectorize(lambda b: bfloat16_bits_to_value(int(b)))(stored).astype(np.float32)
    G = to_float32(stored, dtype)
    np.testing.assert_array_equal(G, decoded)
    for selection in ("sgs-row", "sgs-element", "topk"):
        compare(G, selection, "ars", 3, 4, 4, 1, 0.1)


def test_policy_kernels_name_the_generator_they_were_cached_with():
    """select.py's kernels call generate.py's jitted functions, and numba's cache keys them on
    select.py alone: the hash of generate.py written in select.py makes every change to the
    generator a change to select.py (whose cached kernels then recompile)."""
    import hashlib
    from pathlib import Path

    from timesim.kernels import generate, select

    digest = hashlib.sha256(Path(generate.__file__).read_bytes()).hexdigest()
    assert select._GENERATE_SHA256 == digest, (
        f"kernels/generate.py changed: set _GENERATE_SHA256 = {digest!r} in kernels/select.py")

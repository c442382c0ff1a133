"""Lifetime metrics (DESIGN §3) against hand-computed cases and the paper's formulas."""

import math

import numpy as np
import pytest

import timesim
from timesim.config import Endurance
from timesim.lifetime import cell_endurance, lifetime_report


def endurance(cycles, sigma, seed):
    return Endurance(cycles=cycles, sigma=sigma, seed=seed, sa1_fraction=0.84, failed_bound=0.1,
                     mode="stuck", gradual_onset=0.1)


def test_hand_computed_fixed_endurance():
    writes = [np.array([[10, 2], [0, 4]]), np.array([[3]])]
    r = lifetime_report(10, ["a", "b"], writes, [12, 3], endurance(100, 0, 0))
    assert r["max_writes"] == 10 and r["extension"] == 1.0
    # per-cell policy writes: a 12/4 = 3, b 3/1 = 3 -> tie, first layer binds; 10 / 3
    assert r["balanced_extension"] == pytest.approx(10 / 3) and r["binding_layer"] == "a"
    assert r["trainings_to_failure"] == 10.0 and r["iterations_to_failure"] == 100.0
    # failure iterations E*T/w: 100, 250, 500, 333.3, never -> sorted 100, 250, 333.3, 500, inf
    f = r["iterations_to_failed_fraction"]
    assert f["0.001"] == 100.0 and f["0.1"] == 100.0 and f["0.5"] == pytest.approx(1000 / 3)
    curve = r["failure_curve"]
    assert curve["iterations"][0] == 100.0 and curve["failed_fraction"][0] == pytest.approx(0.2)
    assert curve["failed_fraction"][-1] == pytest.approx(0.8)   # the unwritten cell never fails


def test_lognormal_endurance_has_the_configured_mean_and_is_seeded():
    e = endurance(1e6, 0.5, 7)
    a = cell_endurance(e, 0, (400, 500))
    assert a.mean() == pytest.approx(1e6, rel=0.01)
    assert np.log(a).std() == pytest.approx(0.5, rel=0.01)
    np.testing.assert_array_equal(a, cell_endurance(e, 0, (400, 500)))
    assert not np.array_equal(a, cell_endurance(e, 1, (400, 500)))
    assert cell_endurance(endurance(1e6, 0, 7), 0, (2, 2)) is None


def test_lognormal_first_failure_is_the_weakest_cell_per_write():
    e = endurance(1000, 0.3, 1)
    rng = np.random.default_rng(0)
    writes = [rng.integers(0, 50, size=(6, 5)), rng.integers(0, 50, size=(3, 4))]
    r = lifetime_report(100, ["a", "b"], writes, [10, 10], e)
    ends = [cell_endurance(e, i, w.shape) for i, w in enumerate(writes)]
    want = min(float(np.min(np.where(w > 0, E / np.maximum(w, 1), np.inf)))
               for w, E in zip(writes, ends))
    assert r["trainings_to_failure"] == pytest.approx(want)
    assert r["iterations_to_failure"] == pytest.approx(want * 100)


def run(selection, source="synth:resnet20?iterations=300", wl="none", extra=()):
    hw = timesim.load_hwconfig(None, [f"controller.selection={selection}",
                                      f"controller.wear_leveling={wl}", *extra])
    return timesim.simulate(hw, source)


def test_sparsity_formulas_of_the_paper():
    r = run("sgs")
    for layer in r["trace"]["layers"]:
        s = r["writes"]["by_layer"][layer["name"]]["sparsity"]
        if layer["rows"] >= 128:                                  # row-wise: 1 - 1/rows
            assert s == pytest.approx(1 - 1 / layer["rows"], abs=1e-12)
        else:                                                      # element-wise: 1 - 1/n
            assert s == pytest.approx(1 - 1 / (layer["rows"] * layer["cols"]), abs=1e-12)
    d = run("dense", "synth:mlp-small?iterations=20")
    assert all(v["sparsity"] == 0 for v in d["writes"]["by_layer"].values())
    assert d["lifetime"]["extension"] == 1.0 and d["writes"]["max"] == 20


def test_balanced_bound_of_resnet20_is_144():
    r = run("sgs", wl="ars")
    assert r["lifetime"]["balanced_extension"] == pytest.approx(144.0)
    assert r["lifetime"]["binding_layer"] == "layer1.0.conv1"
    assert r["lifetime"]["extension"] <= r["lifetime"]["balanced_extension"]
    T, mx = r["iterations"], r["writes"]["max"]
    assert r["lifetime"]["extension"] == T / mx
    E = r["hwconfig"]["endurance"]["cycles"]
    assert r["lifetime"]["trainings_to_failure"] == pytest.approx(E / mx)
    assert r["lifetime"]["iterations_to_failure"] == pytest.approx(E * T / mx)


def test_ars_rewrites_are_counted_in_writes_but_not_in_sparsity():
    r = run("sgs-row", "synth:mlp-small?iterations=200", "ars",
            ["controller.interval=10", "controller.rows=8"])
    total_policy = sum((1 - v["sparsity"]) * 200 * l["rows"] * l["cols"]
                       for l, v in zip(r["trace"]["layers"], r["writes"]["by_layer"].values()))
    assert r["ars"]["swaps"] > 0
    assert r["writes"]["total"] == pytest.approx(total_policy + r["ars"]["rewrite_cells"])
    assert not math.isnan(r["lifetime"]["extension"])

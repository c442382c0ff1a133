"""Adversarial wear-out (docs/security.md): hammer workloads against ars and ars-random."""

import numpy as np
import pytest

import timesim
from timesim.trace import open_trace


def extension(model, wl, seed=7, T=4000):
    hw = timesim.load_hwconfig(None, [f"controller.wear_leveling={wl}",
                                      "controller.interval=100", f"controller.seed={seed}"])
    return timesim.simulate(hw, f"synth:{model}?iterations={T}")["lifetime"]["extension"]


def test_hammer_concentrates_on_one_row_without_wear_levelling():
    hw = timesim.load_hwconfig(None, ["controller.wear_leveling=none"])
    r = timesim.simulate(hw, "synth:hammer?iterations=500&row=17")
    assert r["writes"]["max"] == 500                          # row 17 wins every iteration
    assert r["lifetime"]["extension"] == 1.0


def test_ars_defends_a_static_hammer_but_not_a_chasing_one():
    assert extension("hammer", "ars") > 10
    assert extension("hammer-chase", "ars") < 1.5


def test_randomized_ars_defends_the_chasing_hammer():
    for seed in (1, 7, 12345):
        assert extension("hammer-chase", "ars-random", seed) > 8


def test_chasing_attacker_hits_the_same_physical_row_under_deterministic_ars(tmp_path):
    hw = timesim.load_hwconfig(None, ["controller.interval=100"])
    timesim.simulate(hw, "synth:hammer-chase?iterations=2000&row=5", out=tmp_path)
    w = np.load(tmp_path / "writes" / "target.npy")
    assert int(np.argmax(w[:, 0])) == 5 and w[5, 0] >= 1900


def test_ars_random_differs_by_seed_and_is_reproducible():
    def rowmap(seed):
        hw = timesim.load_hwconfig(None, ["controller.wear_leveling=ars-random",
                                          "controller.interval=50", f"controller.seed={seed}"])
        sim = timesim.simulate(hw, "synth:resnet20?iterations=400")
        return sim["writes"]["by_layer"]["layer1.0.conv1"]
    assert rowmap(1) == rowmap(1)
    assert rowmap(1) != rowmap(2)


def test_hammer_parameters_are_checked():
    with pytest.raises(timesim.TraceError, match="row: must be in"):
        open_trace("synth:hammer?row=144")

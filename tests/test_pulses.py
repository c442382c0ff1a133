"""write.pulses=delta: pulse counts from how far each written weight moves, against the numpy
reference of tests/reference.py and a hand-computed case."""

import math

import numpy as np
import pytest

import timesim
from tests.reference import run_reference
from timesim.config import bundled_hwconfig
from timesim.errors import ConfigError
from timesim.policies import LayerPolicy
from timesim.trace import LayerInfo, TraceWriter

DELTA = ["write.pulses=delta", "write.learning_rate=0.5", "write.weight_range=1.0"]
SCALE = 0.5 / (1.0 / 255)          # tiny: 8 weight bits -> step = range / 255


@pytest.mark.parametrize("selection", ["dense", "sgs-row", "sgs-element", "topk"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pulse_slots_and_counts_match_the_reference(selection, seed):
    rng = np.random.default_rng(seed)
    G = (rng.standard_normal((12, 20, 7)) * 0.05).astype(np.float32)
    G[3, 4, 2] = 0.0                                   # a zero moves nothing
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), DELTA + [
        f"controller.selection={selection}", "controller.wear_leveling=none",
        "controller.topk_density=0.05"])
    layer = LayerInfo(name="L", kind="linear", rows=20, cols=7)
    pol = LayerPolicy(layer, hw)
    ops, swaps, slots = (np.zeros(12, np.int64) for _ in range(3))
    pol.process(G, 0)
    pol.write_signature(ops, swaps, slots)
    # tiny: 4 cells a weight (pair x 2 slices), 8 drivers a crossbar
    ref = run_reference(G, selection, density=0.05, block_rows=8, scale=SCALE,
                        write_group=(4, 8))
    assert list(slots) == ref.slots
    assert pol.weight_pulses == ref.pulses
    assert pol.weight_pulses > 0


def trace(path, layers, G):
    with TraceWriter(path, layers, model="m", source="t", batch_size=2,
                     chunk_iterations=4) as w:
        for t in range(G[0].shape[0]):
            w.append({l.name: g[t] for l, g in zip(layers, G)})
    return path


def test_delta_write_time_and_energy_hand_computed(tmp_path):
    # one 6 x 3 layer, sgs-row: the row written at t=0 is the gradient's row of largest |g|;
    # lr 0.5, range 1, 8 bits: one level = 1/255, so g = -0.02 moves 2.55 levels -> 3 SET
    # pulses, g = 0.01 -> 1.275 -> 2 RESET pulses, g = 0.004 -> 0.51 -> 1 RESET pulse.
    layer = LayerInfo(name="a", kind="linear", rows=6, cols=3)
    g = np.zeros((1, 6, 3), np.float32)
    g[0, 2] = [-0.02, 0.01, 0.004]
    r = timesim.simulate(timesim.load_hwconfig(bundled_hwconfig("tiny"), DELTA + [
        "controller.selection=sgs-row", "controller.wear_leveling=none"]),
        str(trace(tmp_path / "t", [layer], [g])))
    # the row: SET phase 3 pulses, RESET phase max(2, 1) = 2 -> 5 slots x 50 ns, in each of
    # its 2 column tiles at once (12 physical cells in 8-wide crossbars)
    assert r["cycles"]["by_layer_phase"]["a"]["write"] == 5 * 50
    # energy: (3 + 2 + 1) pulses per weight x 4 cells (2 slices x pair) x 8 pJ
    assert r["energy_j"]["by_component"]["write"] == pytest.approx(6 * 4 * 8e-12)
    assert math.ceil(0.02 * SCALE) == 3 and math.ceil(0.004 * SCALE) == 1


def test_fixed_and_delta_agree_when_every_move_is_one_pulse(tmp_path):
    # gradients so small that each written weight moves by at most one level
    rng = np.random.default_rng(5)
    layers = [LayerInfo(name="a", kind="linear", rows=6, cols=3),
              LayerInfo(name="b", kind="linear", rows=4, cols=2)]
    G = [(rng.uniform(0.1, 1.0, (8, l.rows, l.cols)) * 1e-3
          * rng.choice([-1, 1], (8, l.rows, l.cols))).astype(np.float32) for l in layers]
    path = str(trace(tmp_path / "t", layers, G))
    sets = ["controller.selection=sgs-row", "controller.wear_leveling=none"]
    fixed = timesim.simulate(timesim.load_hwconfig(bundled_hwconfig("tiny"), sets), path)
    # lr 0.1, range 1: even accumulated, |A| x 0.1 x 255 < 1 level -> one pulse per cell, the
    # fixed model's energy; a row whose cells all move one way takes one phase, not two
    delta = timesim.simulate(timesim.load_hwconfig(bundled_hwconfig("tiny"), sets + [
        "write.pulses=delta", "write.learning_rate=0.1"]), path)
    assert delta["energy_j"]["by_component"]["write"] == pytest.approx(
        fixed["energy_j"]["by_component"]["write"])
    for layer, g in zip(layers, G):
        ref = run_reference(g, "sgs-row", block_rows=8, scale=0.1 * 255)
        assert set(ref.slots) <= {1, 2} and ref.pulses == 8 * layer.cols
        lp, fp = delta["cycles"]["by_layer_phase"][layer.name], fixed["cycles"]["by_layer_phase"]
        assert lp["write"] == 50 * sum(ref.slots)
        assert fp[layer.name]["write"] == 8 * 2 * 50
        for ph in ("forward", "backward", "gradient", "select"):
            assert lp[ph] == fp[layer.name][ph]


def test_delta_needs_gradients(tmp_path):
    from tests.conftest import timing_manifest

    m = timing_manifest(tmp_path / "m", [{"name": "a", "kind": "linear", "rows": 4, "cols": 2}])
    with pytest.raises(ConfigError, match="write.pulses"):
        timesim.simulate(timesim.load_hwconfig(None, ["write.pulses=delta"]), m)

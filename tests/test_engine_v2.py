"""Engine v2: contention, pipelining, duplication, write limit, activity, area, presets.

Cycle counts are hand-computed on processes built from hand-made per-layer costs, or checked
against an independent formula; the fast path's write schedule and ARS passes are compared with
fine mode's simpy simulation on random signatures.
"""


import numpy as np
import pytest

import timesim
from timesim.config import bundled_hwconfig, presets
from timesim.engine import Engine
from timesim.engine.costs import LayerTiming, Transfer, WaveCost, wave_sizes
from timesim.engine.iteration import (
    LayerWork,
    schedule_writes,
    simulate_iteration,
    simulate_writes,
)
from timesim.errors import ConfigError
from timesim.trace import LayerInfo
from timesim.trace.format import TraceMeta

NONE = Transfer()


def layer(fw=(10,), bw=(10,), wg=(0,), wg_in=(NONE,), rows=1, select_row=0) -> LayerWork:
    """A layer with given per-wave forward, backward and gradient cycles (no data movement
    unless given), nothing to select or write."""
    waves = tuple(WaveCost(images=1, fw_in=NONE, fw_compute=f, fw_out=NONE, bw_in=NONE,
                           bw_compute=b, bw_out=NONE, wg_in=gi, wg_compute=g, wg_store=NONE)
                  for f, b, g, gi in zip(fw, bw, wg, wg_in))
    t = LayerTiming(waves=waves, mvm=1, mvm_t=1, select_row=select_row, select_drain=0,
                    topk_select=0, row_write=1, cell_write=1, row_read=1, write_jobs=1,
                    rows=rows)
    return LayerWork(timing=t, swaps=0)


def test_a_shared_gradient_unit_serializes_what_a_longest_path_would_overlap():
    # fwd0 [0,10] fwd1 [10,20] bwd1 [20,30]; with gradients in DRAM both layers' gradients
    # start at 30 and take 100 cycles each. Without contention (a longest-path formula, or two
    # units) the iteration ends at 130; one shared unit runs them one after the other: 230.
    layers = [layer(wg=(100,)), layer(wg=(100,))]
    one = simulate_iteration(layers, gradient_units=1, storage="dram")
    two = simulate_iteration(layers, gradient_units=2, storage="dram")
    longest_path = 10 + 10 + 10 + 100
    assert two.cycles == longest_path
    assert one.cycles == longest_path + 100
    assert sorted(one.write_ready) == [130, 230]
    assert list(one.spans[:, 2]) == [100, 100]        # each layer's gradient lasted 100


def test_the_global_buffer_is_shared_between_layers():
    # two gradient loads of 50 global-buffer cycles at once: the second waits for the first
    gb = (Transfer(global_buffer=50),)
    layers = [layer(wg=(0,), wg_in=gb), layer(wg=(0,), wg_in=gb)]
    r = simulate_iteration(layers, gradient_units=2, storage="dram")
    assert r.cycles == 30 + 50 + 50
    assert sorted(r.write_ready) == [80, 130]


def test_sram_gradients_overlap_the_backward_pass():
    # storage sram (TIME): layer 1's gradient starts when its error is known (end of fwd1, 20)
    # and overlaps bwd1 [20, 30]; layer 0's starts at 30. Both take 100: ends 120 and 130.
    layers = [layer(wg=(100,)), layer(wg=(100,))]
    r = simulate_iteration(layers, gradient_units=2, storage="sram")
    assert sorted(r.write_ready) == [120, 130] and r.cycles == 130


def test_layer_pipelining_hand_computed():
    # two waves; layer 0 takes 10 per wave, layer 1 takes 30. Layer by layer: forward ends at
    # 2*10 + 2*30 = 80. Pipelined: layer 1 starts wave 0 at 10 and wave 1 at 40 -> 70.
    fw = dict(fw=(10, 10), bw=(0, 0), wg=(0, 0), wg_in=(NONE, NONE))
    slow = dict(fw=(30, 30), bw=(0, 0), wg=(0, 0), wg_in=(NONE, NONE))
    none = simulate_iteration([layer(**fw), layer(**slow)], pipeline="none")
    piped = simulate_iteration([layer(**fw), layer(**slow)], pipeline="layer")
    assert none.cycles == 80 and piped.cycles == 70
    assert piped.spans[1, 0] == 60                  # layer 1's forward: [10, 70]


def test_pipeline_buffers_are_bounded():
    # four waves; layer 0 takes 1 per wave, layer 1 takes 10. Two waves fit between the
    # layers: layer 0 finishes wave 2 at 3, but wave 3 waits at its hand-over until layer 1
    # takes wave 1 (at 11): layer 0's forward lasts [0, 11], not [0, 4].
    n = 4
    fast = dict(fw=(1,) * n, bw=(0,) * n, wg=(0,) * n, wg_in=(NONE,) * n)
    slow = dict(fw=(10,) * n, bw=(0,) * n, wg=(0,) * n, wg_in=(NONE,) * n)
    r = simulate_iteration([layer(**fast), layer(**slow)], pipeline="layer")
    assert r.spans[0, 0] == 11
    assert r.cycles == 1 + 4 * 10


def random_writes(rng, L):
    ready = rng.integers(0, 50, L)
    jobs = rng.integers(0, 6, L)
    ops = rng.integers(0, 4, L)
    op = rng.integers(1, 9, L)
    return ready, jobs, ops, op


@pytest.mark.parametrize("seed", range(40))
def test_write_schedule_equals_simpy(seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 7))
    ready, jobs, ops, op = random_writes(rng, L)
    par = int(rng.integers(1, 5))
    s1, e1 = schedule_writes(ready, jobs, ops * op, par)
    s2, e2 = simulate_writes(ready, jobs, ops, ops * op, par)
    assert list(s1) == list(s2) and list(e1) == list(e2)


def test_write_limit_hand_computed():
    # 20 arrays of 100 cycles, 8 at a time: 3 rounds -> 300; a second layer's single array
    # released at 50 waits for a free slot (the first round ends at 100)
    s, e = schedule_writes([0, 50], [20, 1], [100, 100], 8)
    assert (s[0], e[0]) == (0, 300)
    assert (s[1], e[1]) == (200, 300)      # FIFO: it queues behind the first layer's 20 jobs


WIDE = (LayerInfo(name="c1", kind="conv2d", rows=18, cols=5, kernel=(3, 3), in_channels=2,
                  out_channels=5, input_hw=(4, 4), output_hw=(4, 4), stride=(1, 1),
                  padding=(1, 1), pool=(2, 2)),
        LayerInfo(name="c2", kind="conv2d", rows=45, cols=9, kernel=(3, 3), in_channels=5,
                  out_channels=9, input_hw=(2, 2), output_hw=(2, 2), stride=(1, 1),
                  padding=(1, 1)),
        LayerInfo(name="f1", kind="linear", rows=36, cols=9),
        LayerInfo(name="f2", kind="linear", rows=9, cols=3))


def meta(layers=WIDE, batch=5):
    return TraceMeta(model="m", source="t", dataset="", batch_size=batch, iterations=1,
                     chunk_iterations=1, dtype="float32", layers=layers)


@pytest.mark.parametrize("pipeline", ["none", "layer"])
@pytest.mark.parametrize("storage", ["sram", "dram"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pulses", ["fixed", "delta"])
def test_fast_path_writes_and_ars_equal_fine_simulation(pipeline, storage, seed, pulses):
    """What fine mode checks independently: the write phase (each array write a simpy request
    on a chip-wide Resource, against the closed-form list schedule ``schedule_writes``), the
    ARS passes and the fast path's signature cache. Not checked here: the selection. The
    fine-mode comparing element streams its rows as separate events but takes rows x row
    cycles in both modes by construction; its cycles are checked against hand-computed ones
    in test_engine.py::test_hand_computed_cycles_and_energy."""
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), [
        f"engine.pipeline={pipeline}", f"gradient.storage={storage}", "engine.waves=3",
        "write.parallel_arrays=2", "gradient.macs_per_cycle=3", "mapping.duplicate=2",
        "chip.xbars_per_tile=4", "chip.crossbars=400", f"write.pulses={pulses}"])
    sels = ["topk", "sgs-row", "dense", "sgs-element"]
    ks = [4, 0, 0, 0]
    rng = np.random.default_rng(seed)
    ops = np.stack([rng.integers(1, 5, 30), np.ones(30, int), np.full(30, 18),
                    np.ones(30, int)], axis=1)
    swaps = rng.integers(0, 3, (30, 4)) * (rng.random((30, 1)) < 0.3)
    slots = rng.integers(0, 9, (30, 4)) if pulses == "delta" else None
    fast, fine = Engine(hw, meta(), sels, ks), Engine(hw, meta(), sels, ks, fine=True)
    fast.add(ops, swaps, slots)
    fine.add(ops, swaps, slots)
    assert fast.total_cycles == fine.total_cycles > 0
    assert (fast.spans == fine.spans).all()
    assert fine.events > fast.events          # fine mode did simulate every operation
    # the fast path simulated each distinct swap vector once
    assert len(fast._base) == len({tuple(r) for r in swaps})


def test_duplication_auto_fills_tiles_and_multiplies_write_energy(tmp_path):
    # tiny: 8x8 crossbars, weights 8 bits -> 2 slices x pair = 4 cells: f1 (36 x 9) is 5 row
    # blocks x 5 column tiles = 25 crossbars; with 64 crossbars per tile it gets one tile and
    # floor(64 / 25) = 2 copies; f2 (9 x 3): 2 x 2 = 4 crossbars -> 16 copies, capped at its
    # 5 input vectors per iteration (batch 5).
    layers = (WIDE[2], WIDE[3])
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), ["mapping.duplicate=auto",
                                                          "chip.xbars_per_tile=64"])
    e = Engine(hw, meta(layers), ["sgs-row", "sgs-row"], [0, 0])
    assert [m.copies for m in e.mapping.layers] == [2, 5]
    assert [m.arrays for m in e.mapping.layers] == [50, 20]
    none = Engine(timesim.load_hwconfig(bundled_hwconfig("tiny")), meta(layers),
                  ["sgs-row", "sgs-row"], [0, 0])
    # forward: vectors split among copies: 5 vectors on 2 copies -> 3 one after another
    w_dup, w_one = e.timings[0].waves, none.timings[0].waves
    assert sum(w.fw_compute for w in w_dup) < sum(w.fw_compute for w in w_one)


def test_duplication_beyond_the_chip_is_taken_back():
    layers = (WIDE[2], WIDE[3])
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), ["mapping.duplicate=auto",
                                                          "chip.xbars_per_tile=64",
                                                          "chip.crossbars=60"])
    e = Engine(hw, meta(layers), ["sgs-row", "sgs-row"], [0, 0])
    assert sum(m.arrays for m in e.mapping.layers) <= 60
    assert all(m.copies >= 1 for m in e.mapping.layers)


def test_write_energy_and_ars_scale_with_copies(tmp_path):
    from tests.test_engine import two_layer_trace

    trace = two_layer_trace(tmp_path / "t", T=9)
    sets = ["controller.selection=sgs-row", "controller.wear_leveling=ars"]
    one = timesim.simulate(timesim.load_hwconfig(bundled_hwconfig("tiny"), sets), str(trace))
    three = timesim.simulate(timesim.load_hwconfig(bundled_hwconfig("tiny"),
                                                   sets + ["mapping.duplicate=3"]), str(trace))
    assert three["mapping"]["by_layer"]["a"]["copies"] == 3
    assert three["energy_j"]["by_component"]["write"] == pytest.approx(
        3 * one["energy_j"]["by_component"]["write"])
    assert three["energy_j"]["by_component"]["ars"] == pytest.approx(
        3 * one["energy_j"]["by_component"]["ars"])
    # per-cell write counts are those of the logical weight (DESIGN §2)
    assert three["writes"] == one["writes"]


def test_read_energy_follows_input_activity(tmp_path):
    layers = (LayerInfo(name="a", kind="linear", rows=6, cols=3, input_activity=0.25),
              LayerInfo(name="b", kind="linear", rows=4, cols=2))
    from tests.test_engine import two_layer_trace

    trace = two_layer_trace(tmp_path / "t", T=2, layers=layers)
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), ["dac.input_activity=0.5"])
    r = timesim.simulate(hw, str(trace))
    # crossbar reads: a forward 2 vectors x 8 slices x 6 rows x 12 cells x 0.25;
    # b forward and backward 2 x 8 x 4 x 8 x 0.5 each (b has no activity: the hwconfig's)
    reads = 2 * (2 * 8 * 6 * 12 // 4 + 2 * (2 * 8 * 4 * 8 // 2))
    assert r["energy_j"]["by_component"]["crossbar"] == pytest.approx(reads * 25e-15)
    assert r["mapping"]["by_layer"]["a"]["input_activity"] == 0.25


def test_area_counts_units_times_unit_area():
    from timesim.area import area_report

    a = area_report(timesim.load_hwconfig())
    # ISAAC chip: 168 tiles of 96 crossbars; 2 x 16 ADCs per 128x128 crossbar
    assert a["units"] == {"crossbars": 16128, "tiles": 168, "adcs": 16128 * 32}
    assert a["by_component"]["adc"] == pytest.approx(16128 * 32 * 0.0003)
    assert a["by_component"]["crossbar"] == pytest.approx(16128 * 25e-6)
    assert a["by_component"]["buffer"] == pytest.approx(168 * 0.083)
    assert a["total"] == pytest.approx(sum(a["by_component"].values()))


def test_wave_sizes_partition_the_batch():
    for batch in (1, 5, 8, 200, 201):
        for waves in (1, 3, 8, 500):
            s = wave_sizes(batch, waves)
            assert sum(s) == batch and len(s) == min(waves, batch)
            assert max(s) - min(s) <= 1


def test_presets_load_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"time-default", "tiny", "mnsim-256", "neurosim-v2.1-rram"} <= set(presets())
    hw = timesim.load_hwconfig("neurosim-v2.1-rram")
    assert hw.name == "neurosim-v2.1-rram" and hw.mapping.duplicate == "auto"
    with pytest.raises(ConfigError, match="no such hwconfig file or preset"):
        timesim.load_hwconfig("neurosim-v9")


@pytest.mark.parametrize("text,value", [("5e6", 5000000), ("1e-3", 0.001), ("1.0e7", 10**7)])
def test_numbers_in_exponent_notation(text, value):
    key = "controller.topk_density" if value < 1 else "endurance.cycles"
    hw = timesim.load_hwconfig(None, [f"{key}={text}"])
    assert getattr(hw.controller if value < 1 else hw.endurance,
                   "topk_density" if value < 1 else "cycles") == value


@pytest.mark.parametrize("bad", ["mapping.duplicate=0", "mapping.duplicate=some",
                                 "engine.pipeline=deep", "gradient.storage=disk",
                                 "write.parallel_arrays=0", "engine.waves=-1"])
def test_bad_new_keys_are_named(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        timesim.load_hwconfig(None, [bad])


def test_cli_lists_presets_and_runs_one_by_name(tmp_path, capsys, monkeypatch):
    from timesim.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["hwconfigs"]) == 0
    out = capsys.readouterr().out
    assert "neurosim-v2.1-rram" in out and "time-default" in out
    assert main(["run", "--hw", "neurosim-v2.1-rram", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "phases" in out and "area" in out
    assert main(["hwconfigs", "--show", "nope"]) == 2


@pytest.mark.parametrize("pipeline", ["none", "layer"])
@pytest.mark.parametrize("storage", ["sram", "dram"])
@pytest.mark.parametrize("crossbars", [400, 30])
def test_ars_iterations_derived_from_the_quiet_one_equal_their_full_simulation(
        pipeline, storage, crossbars):
    """The fast path derives an ARS iteration from the iteration without swaps when the swaps
    cannot reorder it (``Engine._shifted``); against simpy's full simulation of each swap
    vector (``simulate_iteration``, called here directly), on random vectors small enough to
    be derived and large enough not to be, with and without time-multiplexing (30 crossbars:
    the network is reprogrammed first)."""
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), [
        f"engine.pipeline={pipeline}", f"gradient.storage={storage}", "engine.waves=3",
        "gradient.macs_per_cycle=3", "chip.xbars_per_tile=4", f"chip.crossbars={crossbars}",
        "chip.multiplex=true"])
    sels, ks = ["sgs-row"] * 4, [0] * 4
    rng = np.random.default_rng(crossbars)
    e = Engine(hw, meta(), sels, ks)
    assert e.mapping.multiplexed == (crossbars == 30)
    vectors = [tuple(int(v) for v in rng.integers(0, hi, 4) * (rng.random(4) < 0.6))
               for hi in (2, 4, 40, 400) for _ in range(12)]
    vectors += [(5, 0, 0, 0), (0, 0, 0, 300), (0, 1, 0, 0)]
    for swaps in vectors:
        got = e._phase_a(swaps)
        want = simulate_iteration([LayerWork(timing=t, swaps=s)
                                   for t, s in zip(e.timings, swaps)],
                                  e.reprogram_cycles, False, pipeline, hw.gradient.units,
                                  storage, hw.attention.units)
        assert got.cycles == want.cycles, swaps
        assert got.write_ready == want.write_ready, swaps
        for k in ("start", "end", "spans", "busy", "chip_busy"):
            assert (getattr(got, k) == getattr(want, k)).all(), (k, swaps)
    # both ways were taken: derived vectors, and vectors the shift could not cover
    assert e.derived > 5
    assert e.simulated > 2


@pytest.mark.parametrize("seed", range(6))
def test_distinct_rows_counts_like_numpy_unique(seed):
    """The engine's per-chunk grouping of signatures (a dict for the few rows unlike the
    common one) against np.unique on random chunks: one signature, a few ARS rows (the
    first row among them), and many distinct rows."""
    from timesim.engine import _distinct_rows

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    base = rng.integers(0, 5, 12)
    for odd in (0.0, 0.02, 0.3, 0.9):
        sig = np.tile(base, (n, 1))
        pick = rng.random(n) < odd
        pick[0] = odd > 0 and seed % 2 == 0
        sig[pick] = rng.integers(0, 3, (int(pick.sum()), 12))
        uniq, counts = _distinct_rows(sig)
        want_u, want_c = np.unique(sig, axis=0, return_counts=True)
        got = sorted(zip(map(tuple, uniq.tolist()), counts.tolist()))
        assert got == sorted(zip(map(tuple, want_u.tolist()), want_c.tolist()))
        assert counts.sum() == n

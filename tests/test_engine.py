"""Engine: hand-computed cycles and energy on the tiny chip, invariants, fine mode == fast path."""

import csv

import numpy as np
import pytest

import timesim
from timesim.config import bundled_hwconfig
from timesim.errors import SimulationError
from timesim.trace import LayerInfo, TraceWriter

TWO = [LayerInfo(name="a", kind="linear", rows=6, cols=3),
       LayerInfo(name="b", kind="linear", rows=4, cols=2)]


def two_layer_trace(path, T=3, seed=0, batch=2, layers=TWO):
    rng = np.random.default_rng(seed)
    with TraceWriter(path, layers, model="two", source="test", batch_size=batch,
                     chunk_iterations=2) as w:
        for _ in range(T):
            w.append({l.name: rng.standard_normal((l.rows, l.cols)).astype(np.float32)
                      for l in layers})
    return path


def tiny(*sets):
    return timesim.load_hwconfig(bundled_hwconfig("tiny"), list(sets))


def test_hand_computed_cycles_and_energy(tmp_path):
    trace = two_layer_trace(tmp_path / "t", T=3)
    hw = tiny("controller.selection=sgs-row", "controller.wear_leveling=none",
              "engine.waves=1", "interconnect.hop_latency=0 ns")
    r = timesim.simulate(hw, str(trace), out=tmp_path / "run")
    # tiny: 1 GHz; read 10, DAC 1, ADC 1 with 4 columns per ADC; 8 input bits, 1-bit DAC
    # -> 8 slices of (1 + 10 + 4) = 15 cycles, + 1 shift-add: one MVM = 121 cycles (1 row block;
    # backward of b: 1 column tile). batch 2, linear: 2 vectors, one wave; each layer on 1 tile.
    # Data (8-bit activations): a in 2*6*8 = 96 bits, out 2*3*8 = 48; b in 64, out 32.
    # A load holds the global buffer ceil(bits/256), the interconnect ceil(bits/32), then the
    # tile buffer ceil(2*bits/256); a store the other way round.
    #   fwd a: load 96 (1+3+1) + 2*121 + ReLU ceil(6/2) = 245 + store 48 (1+2+1) = [0, 254]
    #   fwd b: load 64 (1+2+1) + 242 + ReLU 2 + store 32 (1+1+1)        = [254, 505]
    #   bwd b: load 32 (3) + 2*121 + store 64 (4)                        = [505, 754]
    #   grad b: from 505 (its error is the loss); the global buffer is taken by bwd b's load
    #           first [505, 506], then b's 96 activation+error bits [506, 507], 1 MAC cycle
    #           -> [505, 508]; select: 4 rows x max(ceil(2/8), ceil(2*2*4/32)) + drain 2 = 6
    #   grad a: from 754 (bwd b done): GB 1 + 1 MAC cycle = [754, 756]; select 6 x 1 + 3 = 9
    #   writes: a row = 2 phases x 1 pulse x 50 = 100 cycles; b from 754 (its arrays are free
    #           after bwd b), a from 765, each column tile one of 8 write slots -> ends 865.
    c = r["cycles"]
    assert c["total"] == 3 * 865 and c["per_iteration"] == 865
    assert c["by_layer_phase"] == {
        "a": {"forward": 3 * 254, "backward": 0, "gradient": 3 * 2, "select": 3 * 9,
              "write": 3 * 100, "ars": 0},
        "b": {"forward": 3 * 251, "backward": 3 * 249, "gradient": 3 * 3, "select": 3 * 6,
              "write": 3 * 100, "ars": 0}}
    # a phase on the chip lasts from its first start in any layer to its last end
    assert c["by_phase"] == {"forward": 3 * 505, "backward": 3 * 249, "gradient": 3 * 251,
                             "select": 3 * 257, "write": 3 * 111, "ars": 0}
    assert c["by_phase_layer_sum"]["forward"] == 3 * (254 + 251)
    assert c["by_layer"] == {"a": 3 * (254 + 2 + 9 + 100), "b": 3 * (251 + 249 + 3 + 6 + 100)}
    assert r["seconds"] == pytest.approx(3 * 865e-9)
    # energy: weights are 8 bits in 5-bit cells -> 2 slices x differential pair = 4 cells each;
    # only cells whose input bit is 1 draw read current (dac.input_activity 0.5)
    e = r["energy_j"]["by_component"]
    reads = 3 * (2 * 8 * 6 * 12 + 2 * 8 * 4 * 8 * 2) // 2      # V*S*rows*phys_cols*(fwd+bwd)/2
    assert e["crossbar"] == pytest.approx(reads * 25e-15)
    assert e["write"] == pytest.approx(3 * (3 * 4 + 2 * 4) * 8e-12)   # one row per layer
    # n + rows compares per layer (each element, then the row maxima: paper Sec. 3.2)
    assert e["ce"] == pytest.approx(3 * (18 + 6 + 8 + 4) * 0.1e-12)
    adc = 3 * (2 * 8 * (12 * 1) + 2 * 8 * (8 * 1 + 4 * 1))             # a fwd; b fwd + bwd
    assert e["adc"] == pytest.approx(adc * 1.26e-12)
    # interconnect: every activation and error bit, once each way (a fwd; b fwd and bwd)
    assert e["interconnect"] == pytest.approx(3 * (96 + 48 + 2 * (64 + 32)) * 0.13e-12)
    assert e["gradient"] == pytest.approx(3 * 2 * (18 + 8) * 0.3e-12)  # n * V MACs
    assert e["counters"] == 0 and e["ars"] == 0
    assert r["energy_j"]["total"] == pytest.approx(sum(e.values()))
    assert r["energy_j"]["total"] == pytest.approx(sum(r["energy_j"]["by_phase"].values()))
    for layer, phases in r["energy_j"]["by_layer_phase"].items():
        assert sum(phases.values()) == pytest.approx(r["energy_j"]["by_layer"][layer])
    with open(tmp_path / "run" / "actions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(float(x["energy_j"]) for x in rows) == pytest.approx(r["energy_j"]["total"])
    for x in rows:
        assert float(x["energy_j"]) == pytest.approx(
            int(x["count"]) * float(x["energy_per_action_j"]))
        assert x["phase"] in r["energy_j"]["by_phase"]


def run(tmp_path, sets, T=9, name="t", fine=False, layers=TWO):
    trace = tmp_path / name
    if not trace.exists():
        two_layer_trace(trace, T=T, layers=layers)
    return timesim.simulate(tiny(*sets), str(trace), fine=fine)


def test_doubling_pulse_latency_changes_only_write_phases(tmp_path):
    base = run(tmp_path, ["controller.selection=sgs-row"])
    slow = run(tmp_path, ["controller.selection=sgs-row", "write.pulse_latency=100 ns"])
    assert base["ars"]["swaps"] > 0
    for ph in ("forward", "backward", "gradient", "select"):
        assert slow["cycles"]["by_phase"][ph] == base["cycles"]["by_phase"][ph]
    s, b = slow["cycles"]["by_phase_layer_sum"], base["cycles"]["by_phase_layer_sum"]
    assert s["write"] == 2 * b["write"]
    assert s["ars"] > b["ars"]
    assert slow["energy_j"] == base["energy_j"]


@pytest.mark.parametrize("wl", ["none", "ars"])
def test_doubling_write_energy_doubles_only_the_write_component(tmp_path, wl):
    sets = ["controller.selection=sgs", f"controller.wear_leveling={wl}"]
    base = run(tmp_path, sets)
    hot = run(tmp_path, sets + ["write.pulse_energy=16 pJ"])
    for comp, e in base["energy_j"]["by_component"].items():
        want = 2 * e if comp == "write" else e
        assert hot["energy_j"]["by_component"][comp] == pytest.approx(want, rel=1e-12)
    assert hot["cycles"] == base["cycles"]


@pytest.mark.parametrize("selection,cells,rows_written", [
    ("dense", lambda l: l.rows * l.cols, lambda l: l.rows),
    ("sgs-row", lambda l: l.cols, lambda l: 1),
    ("sgs-element", lambda l: 1, lambda l: 1)])
def test_write_work_per_policy(tmp_path, selection, cells, rows_written):
    T = 9
    r = run(tmp_path, [f"controller.selection={selection}", "controller.wear_leveling=none"], T)
    e = r["energy_j"]["by_component"]["write"]
    assert e == pytest.approx(T * sum(cells(l) for l in TWO) * 4 * 8e-12)
    per_row = 100
    per_cell = 100               # 4 cells of one weight <= 8 drivers: one group, 2 phases
    want = sum(T * rows_written(l) * (per_row if selection != "sgs-element" else per_cell)
               for l in TWO)
    assert r["cycles"]["by_phase_layer_sum"]["write"] == want


def test_ars_adds_exactly_its_reads_and_rewrites(tmp_path):
    none = run(tmp_path, ["controller.selection=sgs-row", "controller.wear_leveling=none"])
    ars = run(tmp_path, ["controller.selection=sgs-row", "controller.wear_leveling=ars"])
    swaps = ars["ars"]["swaps"]
    assert swaps > 0 and ars["ars"]["rewrite_cells"] == sum(
        ars["ars"]["by_layer"][l.name]["swaps"] * 2 * l.cols for l in TWO)
    phys = {"a": 12, "b": 8}
    cells = sum(ars["ars"]["by_layer"][n]["swaps"] * 2 * phys[n] for n in phys)
    counters = sum(ars["ars"]["by_layer"][n]["swaps"] * 2 for n in phys) + 9 * 2
    de = {k: ars["energy_j"]["by_component"][k] - none["energy_j"]["by_component"][k]
          for k in none["energy_j"]["by_component"]}
    assert de["ars"] == pytest.approx(cells * 25e-15)
    assert de["write"] == pytest.approx(cells * 8e-12)
    assert de["counters"] == pytest.approx(counters * 0.1e-12)
    assert all(v == pytest.approx(0) for k, v in de.items() if k not in ("ars", "write",
                                                                          "counters"))
    assert ars["energy_j"]["ars_overhead"] == pytest.approx(de["ars"] + de["write"] +
                                                            de["counters"])
    # per swap: read two rows (10 + 4 ADC cycles each) and rewrite them (100 each)
    assert ars["cycles"]["by_phase_layer_sum"]["ars"] == swaps * (2 * 14 + 2 * 100)
    for ph in ("forward", "backward", "gradient", "select", "write"):
        assert (ars["cycles"]["by_phase_layer_sum"][ph]
                == none["cycles"]["by_phase_layer_sum"][ph])


WIDE = [LayerInfo(name="c1", kind="conv2d", rows=18, cols=5, kernel=(3, 3), in_channels=2,
                  out_channels=5, input_hw=(4, 4), output_hw=(4, 4), stride=(1, 1),
                  padding=(1, 1)),
        LayerInfo(name="f1", kind="linear", rows=20, cols=9),
        LayerInfo(name="f2", kind="linear", rows=9, cols=3)]


@pytest.mark.parametrize("selection", ["dense", "topk", "sgs-row", "sgs-element", "sgs"])
@pytest.mark.parametrize("wl", ["none", "ars"])
def test_fine_mode_equals_fast_path(tmp_path, selection, wl):
    sets = [f"controller.selection={selection}", f"controller.wear_leveling={wl}",
            "controller.topk_density=0.1"]
    fast = run(tmp_path, sets, T=11, layers=WIDE)
    fine = run(tmp_path, sets, T=11, layers=WIDE, fine=True)
    for k in ("total", "by_phase", "by_phase_layer_sum", "by_layer"):
        assert fine["cycles"][k] == fast["cycles"][k]
    assert fast["cycles"]["total"] > 0


def test_signatures_are_memoized(tmp_path):
    hw = timesim.load_hwconfig()
    r = timesim.simulate(hw, "synth:resnet20?iterations=3000")
    # sgs: one write per layer every iteration; only ARS iterations (t = 1024, 2048) differ
    assert r["cycles"]["distinct_signatures"] == 3
    # the quiet iteration simulated in simpy; the two ARS iterations derived from it (their
    # swaps end before the layers' stages start: Engine._shifted)
    assert r["run"]["engine_simulated_iterations"] == 1
    assert r["run"]["engine_derived_iterations"] == 2
    # independently: 1000 quiet iterations cost 1000 x one quiet iteration, and the 3000-run
    # is 2998 quiet iterations plus the two ARS iterations, each at least as long
    one = timesim.simulate(hw, "synth:resnet20?iterations=1")["cycles"]["total"]
    quiet = timesim.simulate(hw, "synth:resnet20?iterations=1000")["cycles"]["total"]
    assert quiet == 1000 * one
    extra = r["cycles"]["total"] - 2998 * one
    assert 2 * one < extra <= 2 * one + r["cycles"]["by_phase_layer_sum"]["ars"]


def test_network_that_does_not_fit_is_an_error_or_multiplexed(tmp_path):
    with pytest.raises(SimulationError, match="chip.crossbars: the network needs 3 crossbars"):
        run(tmp_path, ["chip.crossbars=2"])
    r = run(tmp_path, ["chip.crossbars=2", "chip.multiplex=true"])
    assert r["mapping"]["multiplexed"] and r["cycles"]["by_phase"]["reprogram"] > 0
    assert r["energy_j"]["by_component"]["multiplex"] == pytest.approx(
        9 * 1 * 8 * 8 * 8e-12)        # 9 iterations x 1 excess crossbar x 64 cells


@pytest.mark.parametrize("model", ["mlp", "resnet20"])
def test_a_layers_forward_and_backward_do_not_depend_on_the_simulation_waves(model):
    """Waves are a simulation granularity (docs/architecture.md): without layer pipelining a
    layer's forward and backward spans are its stream's work in one piece, whatever the number
    of waves (gradients after the backward pass, ``dram``, so that no weight-gradient unit
    contends with a backward wave: that contention does depend on the waves, as it should).
    The routers' hop latency is paid once per stream; charged per wave, 8 waves cost 7 more
    hop latencies per transfer than 1."""
    spans = {}
    for w in (1, 3, 8):
        hw = timesim.load_hwconfig(None, [f"engine.waves={w}", "engine.pipeline=none",
                                          "gradient.storage=dram"])
        rep = timesim.simulate(hw, f"synth:{model}?iterations=2&seed=3")
        spans[w] = {name: (p["forward"], p["backward"])
                    for name, p in rep["cycles"]["by_layer_phase"].items()}
    assert spans[1] == spans[3] == spans[8]

"""Reliability round 3 (issue 25): numbers that looked fine and were wrong. Each expected value
is computed by hand (or with numpy) from the inputs, never copied from the code's output."""

import csv
import math

import numpy as np
import pytest

import timesim
from timesim.config import bundled_hwconfig
from timesim.trace import LayerInfo, TraceWriter


def tiny(*sets):
    return timesim.load_hwconfig(bundled_hwconfig("tiny"), list(sets))


def write_trace(path, layers, grads):
    """A trace of the given per-iteration gradients {layer: (T, rows, cols)}."""
    T = len(next(iter(grads.values())))
    with TraceWriter(path, layers, model="m", source="test", batch_size=2,
                     chunk_iterations=4) as w:
        for t in range(T):
            w.append({l.name: grads[l.name][t].astype(np.float32) for l in layers})
    return str(path)


def random_trace(path, layers, T=16, seed=0):
    rng = np.random.default_rng(seed)
    return write_trace(path, layers, {l.name: rng.standard_normal((T, l.rows, l.cols))
                                      for l in layers})


def actions(out):
    with open(out / "actions.csv") as fh:
        return list(csv.DictReader(fh))


# -- item 1: ARS write energy (paper Fig. 7) ------------------------------------------------

AB = [LayerInfo(name="a", kind="linear", rows=12, cols=3),
      LayerInfo(name="b", kind="linear", rows=8, cols=2)]


def test_normalized_ars_write_energy_comes_from_the_action_counts(tmp_path):
    out = tmp_path / "r"
    hw = tiny("controller.selection=sgs-row", "controller.wear_leveling=ars",
              "controller.interval=2", "controller.rows=4")
    r = timesim.simulate(hw, random_trace(tmp_path / "t", AB, T=24), out=out)
    assert r["ars"]["swaps"] > 0
    rows = [a for a in actions(out)
            if (a["component"], a["action"]) == ("write", "ars_rewrite_pulse")]
    joules = sum(float(a["energy_j"]) for a in rows)
    per_pulse = float(rows[0]["energy_per_action_j"])
    assert joules > 0
    # one row write: a physical row (cols x cells per weight, every copy), each cell taking
    # write.pulses_per_phase pulses; averaged over the two layers
    m = r["mapping"]["by_layer"]
    row = np.mean([l.cols * m[l.name]["cells_per_weight"] * m[l.name]["copies"] for l in AB])
    pulses = r["hwconfig"]["write"]["pulses_per_phase"]
    expected = joules / r["iterations"] / (row * pulses * per_pulse)
    assert r["ars"]["normalized_write_energy"] == pytest.approx(expected, rel=1e-12)
    assert r["ars"]["normalized_write_energy"] > 0
    # the same pulses as the swaps: 2 rows a swap
    cells = sum(2 * l.cols * m[l.name]["cells_per_weight"] * m[l.name]["copies"]
                * r["ars"]["by_layer"][l.name]["swaps"] for l in AB)
    assert joules == pytest.approx(cells * pulses * per_pulse, rel=1e-12)


def test_fig7_axes_contain_their_points(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from timesim.plots import sweep_plots

    figs = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    rows = [{"controller.interval": si, "controller.rows": R,
             "ars.normalized_write_energy": e, "lifetime.extension": x,
             "lifetime.balanced_extension": 144.0}
            for si, R, e, x in ((256, 8, 0.5, 59.0), (1024, 8, 0.12, 70.0),
                                (256, 32, 2.0, 78.0), (1024, 32, 0.0, 61.0))]
    sweep_plots(tmp_path, ["controller.interval", "controller.rows"], rows)
    assert len(figs) == 2
    for fig, key in zip(figs, ("controller.interval", "ars.normalized_write_energy")):
        ax = fig.axes[0]
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for r in rows:
            assert x0 <= r[key] <= x1 and y0 <= r["lifetime.extension"] <= y1
        assert y0 <= 144.0 <= y1
        # every point is drawn (a zero on a log axis would vanish)
        drawn = sum(len(line.get_xdata()) for line in ax.get_lines()[:-1])
        assert drawn == len(rows)
        close(fig)


# -- item 4: busy cycles beside spans -------------------------------------------------------

def _two_wave_layer(rows=4, select_row=2):
    from timesim.engine.costs import LayerTiming, Transfer, WaveCost
    from timesim.engine.iteration import LayerWork

    load, none = Transfer(global_buffer=5), Transfer()
    waves = tuple(WaveCost(images=1, fw_in=load, fw_compute=10, fw_out=none, bw_in=none,
                           bw_compute=10, bw_out=none, wg_in=none, wg_compute=3, wg_store=none)
                  for _ in range(2))
    t = LayerTiming(waves=waves, mvm=1, mvm_t=1, select_row=select_row, select_drain=0,
                    topk_select=0, row_write=1, cell_write=1, row_read=1, write_jobs=1,
                    rows=rows)
    return LayerWork(timing=t, swaps=0)


@pytest.mark.parametrize("fine", [False, True])
def test_busy_cycles_exclude_waits_hand_computed(fine):
    from timesim.engine.components import PH
    from timesim.engine.iteration import simulate_iteration

    # two layers of two waves, layer by layer, one gradient unit, gradients in SRAM:
    # forward 0: load [0,5] compute [5,15], load [15,20] compute [20,30]
    # forward 1: load [30,35] compute [35,45], load [45,50] compute [50,60]
    # backward 1: [60,70], [70,80] (layer 0 propagates no error)
    # gradient 1: wave 0 known at 45 -> [45,48], wave 1 at 60 -> [60,63]
    # gradient 0: errors known at 70 and 80 -> [70,73], [80,83]
    # select: 4 rows x 2 cycles after the gradient: layer 1 [63,71], layer 0 [83,91]
    r = simulate_iteration([_two_wave_layer(), _two_wave_layer()], fine=fine)
    f, b, g, s = (PH[p] for p in ("forward", "backward", "gradient", "select"))
    assert list(r.spans[:, f]) == [30, 30] and list(r.busy[:, f]) == [20, 20]
    assert list(r.spans[:, b]) == [0, 20] and list(r.busy[:, b]) == [0, 20]
    assert list(r.spans[:, g]) == [13, 18] and list(r.busy[:, g]) == [6, 6]
    assert list(r.spans[:, s]) == [8, 8] and list(r.busy[:, s]) == [8, 8]
    # chip-wide: the union of every layer's busy intervals
    assert r.chip_busy[f] == 40 and r.chip_busy[b] == 20
    assert r.chip_busy[g] == 12 and r.chip_busy[s] == 16


def test_write_busy_is_the_union_of_array_writes():
    from timesim.engine.components import union_length
    from timesim.engine.iteration import schedule_writes, simulate_writes

    # 20 arrays of 100 cycles, 8 at a time: [0,300]; a second layer's array released at 50
    # runs [200,300] (FIFO behind the first layer's jobs)
    for fn in (lambda iv: schedule_writes([0, 50], [20, 1], [100, 100], 8, iv),
               lambda iv: simulate_writes([0, 50], [20, 1], [1, 1], [100, 100], 8, iv)):
        iv = []
        fn(iv)
        a = np.array(iv)
        assert union_length(a[a[:, 0] == 0, 1], a[a[:, 0] == 0, 2]) == 300
        assert union_length(a[a[:, 0] == 1, 1], a[a[:, 0] == 1, 2]) == 100
        assert union_length(a[:, 1], a[:, 2]) == 300
    assert union_length(np.array([0, 5, 20]), np.array([10, 8, 25])) == 15


WIDE = [LayerInfo(name="f1", kind="linear", rows=20, cols=6),
        LayerInfo(name="f2", kind="linear", rows=9, cols=3)]


def _engine(hw, sels, ks, fine=False):
    from timesim.engine import Engine
    from timesim.trace.format import TraceMeta

    meta = TraceMeta(model="m", source="t", dataset="", batch_size=3, iterations=1,
                     chunk_iterations=1, dtype="float32", layers=tuple(WIDE))
    return Engine(hw, meta, sels, ks, fine=fine)


def test_busy_is_the_same_in_fine_mode_after_a_checkpoint_and_a_merge():
    hw = tiny("engine.waves=2", "write.parallel_arrays=1")
    sels, ks = ["topk", "sgs-row"], [5, 0]
    rng = np.random.default_rng(3)
    ops = np.stack([rng.integers(1, 5, 12), np.ones(12, int)], axis=1)
    swaps = rng.integers(0, 2, (12, 2)) * (rng.random((12, 1)) < 0.3)
    fast, fine = _engine(hw, sels, ks), _engine(hw, sels, ks, fine=True)
    fast.add(ops, swaps)
    fine.add(ops, swaps)
    assert (fast.busy == fine.busy).all() and (fast.chip_busy == fine.chip_busy).all()
    assert (fast.busy <= fast.spans).all() and fast.busy.sum() > 0
    # a run resumed from a checkpoint half way
    half = _engine(hw, sels, ks)
    half.add(ops[:6], swaps[:6])
    resumed = _engine(hw, sels, ks)
    resumed.load_state(half.state())
    resumed.add(ops[6:], swaps[6:])
    assert (resumed.busy == fast.busy).all() and (resumed.chip_busy == fast.chip_busy).all()
    # shards merged by signature counts (shard.py)
    merged = _engine(hw, sels, ks)
    merged.add_counts(ops, swaps, None, np.ones(12, dtype=np.int64))
    assert (merged.busy == fast.busy).all() and (merged.chip_busy == fast.chip_busy).all()
    rep = fast.report()
    assert rep["busy_by_layer_phase"]["f1"]["forward"] == int(fast.busy[0, 0])
    assert set(rep["busy_by_phase"]) == set(rep["by_phase"])


# -- item 7: the top-k unit's work, apart from SGS's ------------------------------------------

ONE = [LayerInfo(name="w", kind="linear", rows=12, cols=6)]


def _select_run(tmp_path, selection, *sets):
    trace = tmp_path / "t"
    if not trace.exists():
        random_trace(trace, ONE, T=5, seed=2)
    hw = tiny(f"controller.selection={selection}", "controller.wear_leveling=none",
              "controller.topk_density=0.1", "buffer.read_energy=0 pJ",
              "buffer.write_energy=0 pJ", *sets)
    out = tmp_path / f"{selection}-{len(sets)}"
    return hw, timesim.simulate(hw, str(trace), out=out), out


def test_topk_select_energy_over_sgs_is_the_ratio_of_comparisons(tmp_path):
    _, sgs, _ = _select_run(tmp_path, "sgs-row")
    hw, topk, _ = _select_run(tmp_path, "topk")
    n, rows, T = 72, 12, 5
    k = round(0.1 * n)                         # 7
    topk_compares = n * math.ceil(math.log2(k))                 # a heap of k: 3 compares each
    sgs_compares = n + rows                    # each element as its row streams, then the rows
    e_sgs = sgs["energy_j"]["by_layer_phase"]["w"]["select"]
    e_topk = topk["energy_j"]["by_layer_phase"]["w"]["select"]
    assert e_sgs == pytest.approx(T * sgs_compares * hw.ce.compare_energy_j, rel=1e-12)
    assert e_topk / e_sgs == pytest.approx(topk_compares / sgs_compares, rel=1e-12)


def test_topk_unit_cycles_are_busy_select_cycles(tmp_path):
    n, rows, cols, T = 72, 12, 6, 5
    for units in (1, 4):
        hw, r, _ = _select_run(tmp_path, "topk", f"ce.topk_units={units}")
        b = hw.buffer
        acc = math.ceil(b.accumulator_bits / 8)
        # each gradient row through the accumulator (read + write back) and the CE tree
        row = max(math.ceil(cols / hw.ce.tree_width),
                  math.ceil(2 * cols * acc / b.bytes_per_cycle))
        unit = math.ceil(n * 3 / units)        # n·⌈log2 7⌉ comparisons on `units` comparators
        busy = r["cycles"]["busy_by_layer_phase"]["w"]["select"]
        assert busy == T * (rows * row + unit)
        assert r["cycles"]["busy_by_phase"]["select"] == busy


def test_compare_shows_the_selection_cost_apart(tmp_path, capsys):
    from timesim.compare import compare_runs

    _, sgs, a = _select_run(tmp_path, "sgs-row")
    _, topk, b = _select_run(tmp_path, "topk")
    rows = compare_runs([a, b])
    T = 5
    for row, r in ((rows[0], sgs), (rows[1], topk)):
        assert row["select busy cycles/iter"] == r["cycles"]["busy_by_phase"]["select"] / T
        assert row["select J/iter"] == r["energy_j"]["by_phase"]["select"] / T
    assert rows[1]["select busy cycles/iter"] > rows[0]["select busy cycles/iter"]
    out = capsys.readouterr().out
    assert "select busy cycles/iter" in out
    dc = rows[1]["cycles/iter"] - rows[0]["cycles/iter"]
    ds = rows[1]["select busy cycles/iter"] - rows[0]["select busy cycles/iter"]
    assert f"selection busy {ds:+.4g} cycles/iter" in out
    # one layer: nothing overlaps its selection, so the extra work lengthens the iteration
    assert dc > 0 and "lengthens the iteration" in out


def test_compare_does_not_put_another_difference_down_to_the_selection(tmp_path, capsys):
    """The selection note credits the iteration's difference to the selection only where the
    runs differ in nothing else: not across workloads, nor across chip keys outside
    ``controller``; runs of different lengths get a note; the same selection energy summed in
    another order is no difference."""
    from timesim.compare import _delta, compare_runs

    _, _, a = _select_run(tmp_path, "sgs-row")
    _, _, b = _select_run(tmp_path, "topk", "xbar.cols=16")
    random_trace(tmp_path / "t2", ONE, T=7, seed=3)
    c = tmp_path / "other"
    timesim.simulate(tiny("controller.selection=topk", "controller.wear_leveling=none",
                          "controller.topk_density=0.1"), str(tmp_path / "t2"), out=c)
    _, _, d = _select_run(tmp_path, "topk", "controller.wear_leveling=ars",
                          "controller.interval=2", "controller.rows=4")   # ARS's work too
    renamed = tmp_path / "renamed.yaml"        # the same chip under another name
    renamed.write_text(bundled_hwconfig("tiny").read_text().replace("name: tiny",
                                                                    "name: renamed"))
    e = tmp_path / "e"
    timesim.simulate(timesim.load_hwconfig(renamed, [
        "controller.selection=topk", "controller.wear_leveling=none",
        "controller.topk_density=0.1", "buffer.read_energy=0 pJ", "buffer.write_energy=0 pJ"]),
        str(tmp_path / "t"), out=e)
    capsys.readouterr()
    compare_runs([a, b, c, d, e])
    out = capsys.readouterr().out
    assert "not the selection's alone (hwconfig xbar.cols differs)" in out
    assert "not the selection's alone (another workload or length)" in out
    assert "not the selection's alone (hwconfig controller.interval, " \
        "controller.wear_leveling differ)" in out
    assert out.count("lengthens the iteration") == 1       # e: only the chip's name differs
    assert "note: the runs are of different lengths (5, 7 iterations)" in out
    assert _delta({"select J/iter": 0.1 + 0.2}, {"select J/iter": 0.3}) == "+0"
    assert _delta({"select J/iter": 2e-12}, {"select J/iter": 1e-12}) == "+1e-12"


# -- item 5: top-k write time with many selected weights in one row -------------------------

def test_topk_write_time_counts_groups_of_drivers_per_row(tmp_path):
    # one 6 x 8 layer, k = round(0.125 * 48) = 6: five of them in row 2, one in row 4.
    # tiny: a weight is 4 cells (pair x 2 slices), 8 drivers a crossbar: 2 weights at a time,
    # so row 2 takes ceil(5 * 4 / 8) = 3 groups and row 4 one; a group is a SET and a RESET
    # phase of one 50 ns pulse: 100 cycles at 1 GHz. 4 groups one after another: 400 cycles
    # (one weight's time per touched row, the old count, would be 2 x 100).
    layer = LayerInfo(name="w", kind="linear", rows=6, cols=8)
    g = np.zeros((1, 6, 8), np.float32)
    g[0, 2, :5] = [5.0, -4.0, 3.0, 2.5, -2.0]
    g[0, 4, 7] = 6.0
    hw = tiny("controller.selection=topk", "controller.wear_leveling=none",
              "controller.topk_density=0.125")
    assert hw.write.verify_reads == 0 and hw.write.phases == 2
    r = timesim.simulate(hw, write_trace(tmp_path / "t", [layer], {"w": g}))
    w = r["cycles"]["by_layer_phase"]["w"]["write"]
    assert w == 4 * 2 * hw.write.pulses_per_phase * 50
    assert r["cycles"]["busy_by_layer_phase"]["w"]["write"] == w
    assert r["writes"]["by_layer"]["w"]["total"] == 6


# -- item 6: limits that used to be silent ---------------------------------------------------

DELTA = ["write.pulses=delta", "write.learning_rate=0.5", "write.weight_range=1.0"]


@pytest.mark.parametrize("selection, capped", [("sgs-row", 2), ("sgs-element", 1),
                                               ("topk", 2), ("dense", 2)])
def test_capped_pulse_counts_are_reported(tmp_path, caplog, selection, capped):
    # lr 0.5 on 8-bit weights over [-1, 1]: one level = 1/255, so |g| = 1e9 asks for
    # 1.3e11 pulses, beyond the 2^20 cap; 1e-3 asks for 1. k = round(0.1 * 18) = 2.
    layer = LayerInfo(name="a", kind="linear", rows=6, cols=3)
    g = np.zeros((1, 6, 3), np.float32)
    g[0, 2] = [1e9, -1e9, 1e-3]
    hw = tiny(*DELTA, f"controller.selection={selection}", "controller.wear_leveling=none",
              "controller.topk_density=0.1")
    with caplog.at_level("WARNING"):
        r = timesim.simulate(hw, write_trace(tmp_path / "t", [layer], {"a": g}))
    pc = r["writes"]["pulses_capped"]
    assert pc["cap"] == 2 ** 20 and pc["weights"] == capped and pc["by_layer"] == {"a": capped}
    assert f"{capped} written weights needed more than 1048576 pulses" in caplog.text
    # and nothing to report on an ordinary gradient
    g[0, 2] = [0.01, -0.02, 1e-3]
    r = timesim.simulate(hw, write_trace(tmp_path / "u", [layer], {"a": g}))
    assert r["writes"]["pulses_capped"]["weights"] == 0


def test_engine_cache_limit_keeps_counting_simulated_iterations(monkeypatch, caplog):
    import timesim.engine as eng

    hw = tiny()
    sels, ks = ["sgs-row", "sgs-row"], [0, 0]
    ops = np.ones((1, 2), np.int64)
    ref = _engine(hw, sels, ks)
    monkeypatch.setattr(eng, "MAX_DISTINCT", 3)
    small = _engine(hw, sels, ks)
    with caplog.at_level("WARNING"):
        for v in range(5):                     # five distinct swap vectors, one at a time
            swaps = np.array([[v, 0]], np.int64)
            small.add(ops, swaps)
            ref.add(ops, swaps)
    ex = small.execution()
    # swaps on layer 0 only: each vector is the quiet iteration (0, 0) delayed
    # (Engine._shifted), so (0, 0) is simulated, (1..4, 0) derived from it, and (0, 0)
    # simulated once more after the cache started over at (3, 0)
    assert ex["engine_simulated_iterations"] == 2
    assert ex["engine_derived_iterations"] == 4
    assert ex["engine_cache_clears"] >= 1
    assert "caches start over" in caplog.text
    assert small.report()["distinct_signatures"] is None    # more than 3: not counted
    assert "distinct_signatures is reported as null" in caplog.text
    assert small.total_cycles == ref.total_cycles and (small.busy == ref.busy).all()


# -- item 2: a chip whose fault-free analog error is meaningless says so ----------------------

def test_fault_free_error_beyond_the_limit_is_a_warning(caplog):
    from timesim.faults import FAULT_FREE_LIMIT

    trace = "synth:mlp-small?iterations=4"
    # neurosim-v2.1-rram: adc.range 1.0, one full-scale range for a bit-sliced MVM
    ns = timesim.load_hwconfig("neurosim-v2.1-rram")
    with caplog.at_level("WARNING"):
        r = timesim.simulate(ns, trace, faults=True)
    f = r["faults"]
    errors = f["mvm_rel_error_fault_free"]
    worst = max(errors, key=errors.get)
    assert errors[worst] > FAULT_FREE_LIMIT
    assert f["warning"] is not None and worst in f["warning"]
    assert "adc.range=auto" in f["warning"]
    assert sum("fault-free MVM error" in m for m in caplog.messages) == 1      # one line
    # the same chip with calibrated ADCs, and the default chip: nothing to say
    for hw in (timesim.load_hwconfig("neurosim-v2.1-rram", ["adc.range=auto"]),
               timesim.load_hwconfig()):
        f = timesim.simulate(hw, trace, faults=True)["faults"]
        assert max(f["mvm_rel_error_fault_free"].values()) < FAULT_FREE_LIMIT
        assert f["warning"] is None
    # without --faults nothing is measured and nothing is claimed
    assert timesim.simulate(ns, trace)["faults"]["warning"] is None


# -- item 17: dead code -----------------------------------------------------------------------

def test_dead_members_are_gone():
    from timesim import faults, mapping

    assert not hasattr(faults, "layer_endurance")
    assert not hasattr(mapping.LayerMapping, "phys_cells")
    assert not hasattr(mapping.NetworkMapping, "resident_fraction")


# -- item 15: lifetime in training time -------------------------------------------------------

def test_lifetime_in_training_time(tmp_path, capsys):
    from timesim.cli import main

    trace = random_trace(tmp_path / "t", AB, T=8)
    out = tmp_path / "r"
    assert main(["run", "--hw", str(bundled_hwconfig("tiny")), "--trace", trace,
                 "--set", "controller.selection=sgs-row", "--set", "endurance.cycles=1e6",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    import json

    r = json.loads((out / "report.json").read_text())
    T = r["iterations"]
    max_writes = max(int(np.load(out / "writes" / f"{l.name}.npy").max()) for l in AB)
    iterations = 1e6 * T / max_writes                      # the first cell's failure
    per_iteration = r["cycles"]["total"] / T / 1e9          # tiny: 1 GHz
    lt = r["lifetime"]
    assert lt["seconds_per_iteration"] == pytest.approx(per_iteration, rel=1e-12)
    assert lt["seconds_to_failure"] == pytest.approx(iterations * per_iteration, rel=1e-12)
    assert lt["days_to_failure"] == pytest.approx(iterations * per_iteration / 86400,
                                                  rel=1e-12)
    s = iterations * per_iteration
    unit, size = next((u, z) for u, z in (("years", 365.25 * 86400), ("days", 86400),
                                           ("hours", 3600), ("minutes", 60), ("s", 1))
                      if s >= z)
    assert f"that is {s / size:.3g} {unit} of training" in printed


def test_timing_only_topk_write_time_counts_groups(tmp_path):
    from .conftest import timing_manifest

    # a 4 x 16 layer, k = round(0.25 * 64) = 16 weights over (at most) its 4 rows: 4 a row,
    # 16 cells of 4-cell weights on 8 drivers: 2 groups a row, 8 groups of 100 cycles
    m = timing_manifest(tmp_path / "m", [{"name": "a", "kind": "linear", "rows": 4,
                                          "cols": 16}])
    hw = tiny("controller.selection=topk", "controller.wear_leveling=none",
              "controller.topk_density=0.25")
    r = timesim.simulate(hw, m)
    assert r["cycles"]["by_layer_phase"]["a"]["write"] == 8 * 2 * 50

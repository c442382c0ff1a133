"""Reliability round 3 (issue 25): numbers that looked fine and were wrong. Each expected value
is computed by hand (or with numpy) from the inputs, never copied from the code's output."""

import csv

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

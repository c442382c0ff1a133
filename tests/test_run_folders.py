"""Run folders and sweeps never reuse or mix stale results; resume continues exactly (issue
13: items 1, 2, 5, 19)."""

import dataclasses
import json
import logging

import numpy as np
import pytest

import timesim
from timesim import checkpoint
from timesim.config import bundled_hwconfig
from timesim.report import trace_fingerprint
from timesim.simulate import Simulation
from timesim.sweep import parse_grid, run_sweep
from timesim.trace import LayerInfo, TraceWriter

WALL = ("run", "created")


def strip(report):
    out = {k: v for k, v in report.items() if k not in WALL}
    return json.loads(json.dumps(out))


def write_trace(path, layers, T=16, seed=0, nan_at=(), chunk=4):
    rng = np.random.default_rng(seed)
    with TraceWriter(path, layers, model="m", source="test", batch_size=2,
                     chunk_iterations=chunk) as w:
        for t in range(T):
            g = {l.name: rng.standard_normal((l.rows, l.cols)).astype(np.float32)
                 for l in layers}
            if t in nan_at:
                g[layers[0].name][0, 0] = np.nan
            w.append(g)
    return path


AB = [LayerInfo(name="a", kind="linear", rows=6, cols=3),
      LayerInfo(name="b", kind="linear", rows=4, cols=2)]
C = [LayerInfo(name="c", kind="linear", rows=5, cols=4)]


def tiny(*sets):
    return timesim.load_hwconfig(bundled_hwconfig("tiny"), list(sets))


def test_report_carries_trace_fingerprint_and_hwconfig_hash(tmp_path):
    t1 = write_trace(tmp_path / "t1", AB)
    t2 = write_trace(tmp_path / "t2", AB, seed=1)
    copy = tmp_path / "elsewhere"
    import shutil
    shutil.copytree(t1, copy)
    r1, r2, rc = (timesim.simulate(tiny(), str(t)) for t in (t1, t2, copy))
    assert r1["trace"]["fingerprint"] != r2["trace"]["fingerprint"]    # other gradients
    assert r1["trace"]["fingerprint"] == rc["trace"]["fingerprint"]    # same content, moved
    assert r1["hwconfig_hash"] == rc["hwconfig_hash"]
    assert timesim.simulate(tiny("write.pulse_latency=60 ns"), str(t1))["hwconfig_hash"] \
        != r1["hwconfig_hash"]
    s1 = timesim.simulate(tiny(), "synth:mlp-small?iterations=8&seed=1")
    s2 = timesim.simulate(tiny(), "synth:mlp-small?iterations=8&seed=2")
    assert s1["trace"]["fingerprint"] != s2["trace"]["fingerprint"]


def test_a_sweep_into_an_old_folder_reruns_points_of_another_trace(tmp_path):
    grid = parse_grid(["controller.interval=4,8"])
    out = str(tmp_path / "sw")
    t1 = write_trace(tmp_path / "t1", AB, T=24)
    t2 = write_trace(tmp_path / "t2", AB, T=24, seed=7)
    first = run_sweep(None, str(t1), grid, out, base_sets=["controller.selection=sgs-row"],
                      workers=1)
    second = run_sweep(None, str(t2), grid, out, base_sets=["controller.selection=sgs-row"],
                       workers=1)
    fresh = run_sweep(None, str(t2), grid, str(tmp_path / "fresh"),
                      base_sets=["controller.selection=sgs-row"], workers=1)
    assert second == fresh and first != second
    # and a different fixed setting reruns too
    other = run_sweep(None, str(t2), grid, out, base_sets=["controller.selection=sgs-element"],
                      workers=1)
    assert other == run_sweep(None, str(t2), grid, str(tmp_path / "fresh2"),
                              base_sets=["controller.selection=sgs-element"], workers=1)


class Crash(Exception):
    pass


@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_resume_with_nonfinite_skip_equals_a_fresh_run(tmp_path, monkeypatch, mode):
    trace = write_trace(tmp_path / "t", AB, T=16, nan_at=(1, 2, 9))
    hw = tiny("controller.selection=sgs-row", "controller.interval=3")
    fresh = timesim.simulate(hw, str(trace), out=tmp_path / "fresh", nonfinite=mode)
    out = tmp_path / "run"

    def crash(self, *a, **k):
        raise Crash()

    monkeypatch.setattr(Simulation, "finish", crash)
    with pytest.raises(Crash):                       # the run dies after its checkpoints
        timesim.simulate(hw, str(trace), out=out, checkpoint_every=4, nonfinite=mode)
    monkeypatch.undo()
    assert (out / checkpoint.NAME).exists()
    resumed = timesim.simulate(hw, str(trace), out=out, checkpoint_every=4, resume=True,
                               nonfinite=mode)
    assert strip(resumed) == strip(fresh)
    assert resumed["iterations"] == (13 if mode == "skip" else 16)
    assert resumed["nonfinite"]["by_layer"] == {"a": 3}
    for name in ("a", "b"):
        np.testing.assert_array_equal(np.load(out / "writes" / f"{name}.npy"),
                                      np.load(tmp_path / "fresh" / "writes" / f"{name}.npy"))


def test_resume_under_another_nonfinite_mode_is_refused(tmp_path, monkeypatch):
    trace = write_trace(tmp_path / "t", AB, T=16, nan_at=(5,))
    hw = tiny()
    monkeypatch.setattr(Simulation, "finish", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        timesim.simulate(hw, str(trace), out=tmp_path / "r", checkpoint_every=4,
                         nonfinite="skip")
    monkeypatch.undo()
    with pytest.raises(timesim.errors.SimulationError, match="another trace or --nonfinite"):
        timesim.simulate(hw, str(trace), out=tmp_path / "r", resume=True, nonfinite="zero")


def test_a_new_run_replaces_an_old_one_in_its_folder(tmp_path, caplog):
    out = tmp_path / "run"
    timesim.simulate(tiny(), str(write_trace(tmp_path / "ab", AB)), out=out)
    (out / "heatmap_a.png").write_bytes(b"old figure")
    (out / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="timesim"):
        timesim.simulate(tiny(), str(write_trace(tmp_path / "c", C)), out=out)
    assert sorted(p.name for p in (out / "writes").iterdir()) == ["c.npy"]
    assert sorted(p.name for p in (out / "rowmap").iterdir()) == ["c.npy"]
    assert not (out / "heatmap_a.png").exists()
    assert (out / "notes.txt").read_text() == "mine"          # not ours: left alone
    assert "replacing the earlier run" in caplog.text


def test_checkpoint_without_resume_is_discarded_with_a_word(tmp_path, monkeypatch, caplog):
    trace = write_trace(tmp_path / "t", AB, T=16)
    out = tmp_path / "run"
    monkeypatch.setattr(Simulation, "finish", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        timesim.simulate(tiny(), str(trace), out=out, checkpoint_every=4)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="timesim"):
        timesim.simulate(tiny(), str(trace), out=out)
    assert "discarding its checkpoint" in caplog.text
    assert not (out / checkpoint.NAME).exists()


def test_resume_on_a_new_folder_says_it_starts_over(tmp_path, caplog):
    trace = write_trace(tmp_path / "t", AB)
    with caplog.at_level(logging.WARNING, logger="timesim"):
        r = timesim.simulate(tiny(), str(trace), out=tmp_path / "new", resume=True)
    assert "no checkpoint to resume from" in caplog.text
    assert r["iterations"] == 16


def test_fingerprint_ignores_where_the_trace_lies(tmp_path):
    t = write_trace(tmp_path / "x", AB)
    import shutil
    shutil.copytree(t, tmp_path / "y")
    a, b = (trace_fingerprint(timesim.open_trace(str(p))) for p in (t, tmp_path / "y"))
    assert a == b


def test_fault_probe_is_opt_in_and_the_schema_stays(tmp_path):
    import subprocess
    import sys

    trace = write_trace(tmp_path / "t", AB, T=16)
    hw = tiny("endurance.cycles=3", "controller.selection=sgs-row",
              "controller.wear_leveling=none")
    cheap = timesim.simulate(hw, str(trace))
    full = timesim.simulate(hw, str(trace), faults=True)
    assert cheap["faults"].keys() == full["faults"].keys()
    assert cheap["faults"]["failed_fraction"] == full["faults"]["failed_fraction"]
    assert cheap["faults"]["iterations_to_bound"] == full["faults"]["iterations_to_bound"]
    assert all(v is None for v in cheap["faults"]["mvm_rel_error"].values())
    assert all(v > 0 for v in full["faults"]["mvm_rel_error"].values())
    assert cheap["faults"]["probe"] is None and full["faults"]["probe"]
    # a run without --faults never loads the analog model
    code = ("import sys, timesim; timesim.simulate(timesim.load_hwconfig(), "
            "'synth:mlp-small?iterations=8'); print('timesim.analog' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_failed_fraction_counts_cells_past_their_endurance(tmp_path):
    trace = write_trace(tmp_path / "t", AB, T=16)
    out = tmp_path / "r"
    r = timesim.simulate(tiny("endurance.cycles=3", "controller.selection=sgs-row",
                              "controller.wear_leveling=none"), str(trace), out=out)
    for name in ("a", "b"):
        w = np.load(out / "writes" / f"{name}.npy")
        assert r["faults"]["failed_fraction"][name] == pytest.approx((w > 3).mean())


def test_faults_evaluate_the_traces_model_on_the_worn_chip(tmp_path):
    pytest.importorskip("torch")
    from timesim.cli import bundled_trace

    trace = bundled_trace()                      # digits LeNet, recorded with its weights
    hw = timesim.load_hwconfig(None, ["endurance.cycles=40"])
    r = timesim.simulate(hw, trace, faults=True)
    a = r["faults"]["accuracy"]
    assert a["model"] == "digits-lenet" and a["test_images"] == 360
    # a trained model (chance is 0.1 on ten digits): the README's wear-out demo shows a drop
    assert a["digital"] > 0.9 and a["fault_free"] > 0.9
    assert len(a["iterations"]) == len(a["accuracy"]) == len(a["failed_fraction"])
    assert a["iterations"] == sorted(a["iterations"])
    # before any cell fails the worn chip is the fault-free chip; wear only takes accuracy away
    for f, acc in zip(a["failed_fraction"], a["accuracy"]):
        if f == 0:
            assert acc == a["fault_free"]
    assert a["failed_fraction"][-1] > 0.01
    assert a["accuracy"][-1] < a["fault_free"]
    assert timesim.simulate(hw, trace)["faults"]["accuracy"] is None      # opt-in


@pytest.mark.parametrize("chunk", [1, 7])
def test_max_writes_history_marks_every_ceil_t_over_1000_at_chunk_ends(tmp_path, chunk):
    """max_writes_history.csv (docs/metrics.md): a mark every ceil(T/1000) iterations, a point
    at the first chunk end on or after each mark and at T; each layer's value is its max write
    count there, here from the plain reference run iteration by iteration. Chunk 7: a trace
    on disk through simulate(); chunk 1 (a point at every mark): fed to the Simulation."""
    from tests.reference import RefLayer

    T = 1300
    rng = np.random.default_rng(5)                  # write_trace's gradients
    G = [{l.name: rng.standard_normal((l.rows, l.cols)).astype(np.float32) for l in AB}
         for _ in range(T)]
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-element",
                                      "controller.wear_leveling=none"])
    if chunk == 7:
        write_trace(tmp_path / "t", AB, T=T, seed=5, chunk=chunk)
        timesim.simulate(hw, str(tmp_path / "t"), out=tmp_path / "o")
        rows = (tmp_path / "o" / "max_writes_history.csv").read_text().split()
        assert rows[0] == "iteration,a,b"
        got = [[int(v) for v in r.split(",")] for r in rows[1:]]
    else:
        meta = timesim.open_trace(str(write_trace(tmp_path / "t", AB, T=1))).meta
        sim = Simulation(hw, dataclasses.replace(meta, iterations=T))
        for t in range(T):
            sim.feed({n: g[None] for n, g in G[t].items()}, t, 1)
        sim.finish()
        got = [[t, *m] for t, m in zip(sim.hist_t, sim.hist_max)]
    step = 2                                        # ceil(1300 / 1000)
    ends = [*range(chunk, T, chunk), T]              # the last chunk is shorter
    want_t = sorted({min(e for e in ends if e >= m) for m in range(step, T + 1, step)} | {T})
    assert [r[0] for r in got] == want_t and len(got) <= 1000 + 1
    ref = [RefLayer(l.rows, l.cols, "sgs-element") for l in AB]
    want = {}
    for t in range(1, T + 1):
        for layer, info in zip(ref, AB):
            layer.step(G[t - 1][info.name])
        want[t] = [int(layer.writes.max()) for layer in ref]
    assert [r[1:] for r in got] == [want[t] for t in want_t]

"""Sweeps: each point equals a run, local == Dask, resume after kill, figures, compare."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

import timesim
from timesim.cli import main
from timesim.sweep import METRICS, parse_grid, run_sweep

TRACE = "synth:mlp-small?iterations=400&seed=1"
GRID = ["controller.interval=16,64", "controller.rows=4,8"]


def table(out):
    with open(out / "sweep.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw") / "local"
    run_sweep(None, TRACE, parse_grid(GRID), str(out), base_sets=["endurance.sigma=0.2"],
              workers=2)
    return out


def test_every_point_equals_a_run(local_sweep):
    rows = table(local_sweep)
    assert len(rows) == 4
    assert list(rows[0])[:3] == ["point", "controller.interval", "controller.rows"]
    assert all(m in rows[0] for m in METRICS)
    for row in rows:
        hw = timesim.load_hwconfig(None, ["endurance.sigma=0.2",
                                          f"controller.interval={row['controller.interval']}",
                                          f"controller.rows={row['controller.rows']}"])
        r = timesim.simulate(hw, TRACE)
        assert float(row["lifetime.extension"]) == r["lifetime"]["extension"]
        assert int(row["writes.max"]) == r["writes"]["max"]
        assert int(row["cycles.total"]) == r["cycles"]["total"]
        assert float(row["energy_j.total"]) == r["energy_j"]["total"]
        saved = json.loads((local_sweep / "points" / row["point"] / "report.json").read_text())
        assert saved["writes"] == r["writes"]
    data = json.loads((local_sweep / "sweep.json").read_text())
    assert data["keys"] == ["controller.interval", "controller.rows"] and len(data["points"]) == 4


def test_worker_count_does_not_change_results(tmp_path, local_sweep):
    run_sweep(None, TRACE, parse_grid(GRID), str(tmp_path / "one"),
              base_sets=["endurance.sigma=0.2"], workers=1)
    assert table(tmp_path / "one") == table(local_sweep)


def test_dask_cluster_gives_the_same_table(tmp_path, local_sweep):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        run_sweep(None, TRACE, parse_grid(GRID), str(tmp_path / "dask"),
                  base_sets=["endurance.sigma=0.2"], scheduler=cluster.scheduler_address)
    assert table(tmp_path / "dask") == table(local_sweep)


def test_interrupted_sweep_resumes_to_the_same_table(tmp_path):
    args = [sys.executable, "-m", "timesim", "sweep", "--trace",
            "synth:resnet20?iterations=1500", "--grid", "controller.interval=32,64,128,256",
            "--workers", "1", "--out", str(tmp_path / "s")]
    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (tmp_path / "s" / "sweep.csv").exists() and len(table(tmp_path / "s")) >= 1:
            break
        time.sleep(0.05)
    helpers = psutil.Process(proc.pid).children(recursive=True)    # forkserver, worker
    assert helpers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the killed sweep's worker and forkserver end by themselves (they used to wait forever)
    gone, alive = psutil.wait_procs(helpers, timeout=60)
    assert not alive, alive
    partial = table(tmp_path / "s")
    assert 1 <= len(partial) < 4
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = table(tmp_path / "s")
    fresh_out = tmp_path / "fresh"
    assert main(["sweep", "--trace", "synth:resnet20?iterations=1500", "--grid",
                 "controller.interval=32,64,128,256", "--workers", "2", "--out",
                 str(fresh_out)]) == 0
    assert resumed == table(fresh_out)
    assert all(p in resumed for p in partial)


def test_sigint_to_the_sweep_alone_stops_its_points_and_says_how_to_go_on(tmp_path):
    """kill -INT to the sweep process (not a terminal's Ctrl-C, which reaches its workers
    too) used to wait, silently, for every running point to finish: now it stops them, says
    what was kept, and exits 130; the points' folders stay for the next run to continue."""
    args = [sys.executable, "-m", "timesim", "sweep", "--trace",
            "synth:resnet20?iterations=5000000", "--grid", "controller.interval=64,128",
            "--workers", "2", "--out", str(tmp_path / "s")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(6000):       # both points started (their point.json written)
        if len(list((tmp_path / "s").glob("points/*/point.json"))) == 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted: 0 finished points kept" in err and "2 workers stopped" in err
    assert "starts over (no --checkpoint-every)" in err       # nothing to continue from
    assert not list((tmp_path / "s").glob("points/*/report.json"))     # none ran to the end


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_sweep_not_yet_reaped_counts_as_gone():
    """A sweep's workers watch it (sweep._alive): a dead sweep whose parent has not reaped it
    (a harness reading its output to the end first) is a zombie that kill(pid, 0) still
    answers; it must count as gone, or the workers outlive it."""
    from timesim.sweep import _alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _alive(child.pid)
        child.kill()
        for _ in range(2000):          # dead but not reaped: /proc says Z
            state = open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.01)
        assert state == "Z" and not _alive(child.pid)
    finally:
        child.wait()
    assert not _alive(child.pid)       # reaped: no such process


def test_sweep_figures_are_produced(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "f"
    assert main(["sweep", "--trace", TRACE, "--grid", "controller.interval=16,64,256",
                 "--grid", "controller.rows=4,8", "--out", str(out), "--plots"]) == 0
    import matplotlib.image as mpimg
    import numpy as np
    for f in ("fig6_extension_vs_interval.png", "fig7_extension_vs_ars_energy.png"):
        img = mpimg.imread(out / f)
        assert img.shape[0] > 200 and np.std(img[..., :3]) > 0.05


def test_compare_prints_one_table(tmp_path, local_sweep, capsys):
    runs = sorted(str(p) for p in (local_sweep / "points").iterdir())[:2]
    assert main(["compare", *runs, "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "policy", "max"] and len(out) >= 3
    assert (tmp_path / "cmp.png").stat().st_size > 5000
    assert main(["compare", str(tmp_path)]) == 2


@pytest.mark.parametrize("grid,needle", [
    (["controller.interval"], "expected key.path=v1,v2"),
    (["controller.interval=16,"], "expected key.path=v1,v2"),
    (["controller.bogus=1,2"], "--grid controller.bogus=1,2: controller.bogus: unknown key"),
    (["controller.interval=0,4"], "--grid controller.interval=0,4: controller.interval: must be "
                                  "positive"),
    (["controller.rows=2", "controller.rows=4"], "swept twice")])
def test_bad_grids_exit_2(tmp_path, grid, needle, capsys):
    args = ["sweep", "--trace", TRACE, "--out", str(tmp_path / "x")]
    for g in grid:
        args += ["--grid", g]
    assert main(args) == 2
    assert needle in capsys.readouterr().err


def test_a_sweep_says_once_per_policy_that_its_recording_was_dense(tmp_path, caplog):
    """The points run in worker processes, whose logs the user does not see: the sweep says
    it in its own process, once per sparse policy of the grid, none for dense points."""
    import numpy as np

    from timesim.trace.format import LayerInfo
    from timesim.trace.writer import TraceWriter

    rng = np.random.default_rng(0)
    w = TraceWriter(tmp_path / "t", [LayerInfo(name="fc", kind="linear", rows=6, cols=4)],
                    model="toy", source="test", chunk_iterations=8)
    w.updates = "dense"                 # as TraceRecorder writes it without SparseUpdate
    with w:
        for _ in range(16):
            w.append({"fc": rng.standard_normal((6, 4)).astype(np.float32)})
    with caplog.at_level("WARNING", logger="timesim"):
        run_sweep(None, str(tmp_path / "t"), parse_grid(
            ["controller.selection=topk,sgs,dense", "controller.topk_density=0.1,0.2"]),
            str(tmp_path / "sw"), workers=1)
    said = [r.getMessage() for r in caplog.records if "recorded from dense SGD" in
            r.getMessage()]
    assert len(said) == 2 and "'topk'" in said[0] and "'sgs'" in said[1]

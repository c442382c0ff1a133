"""One run over a Dask cluster (shard.py): the same run folder as a local run, per-shard
resume, and the pieces (partition, signature merge) against plain references."""

import filecmp
from pathlib import Path

import numpy as np
import pytest

import timesim
from timesim.cli import main
from timesim.errors import SimulationError
from timesim.report import trace_fingerprint
from timesim.shard import merge_signatures, partition, run_shard
from timesim.simulate import Simulation, run_fingerprint
from timesim.trace import open_trace

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def same_run(a: Path, b: Path, ra: dict, rb: dict) -> None:
    for k in ra:
        if k != "run":
            assert ra[k] == rb[k], k
    for d in ("writes", "rowmap"):
        for f in (a / d).iterdir():
            assert np.array_equal(np.load(f), np.load(b / d / f.name)), f.name
    for f in ("actions.csv", "max_writes_history.csv", "hwconfig.yaml"):
        assert filecmp.cmp(a / f, b / f, shallow=False), f


@pytest.mark.parametrize("sets,trace", [
    (["controller.interval=64"], "synth:resnet20?iterations=600&chunk=32"),
    (["controller.selection=topk", "write.pulses=delta", "controller.wear_leveling=ars",
      "controller.interval=16"], "synth:mlp-small?iterations=300&chunk=7")])
def test_sharded_run_equals_local_run(client, tmp_path, sets, trace):
    hw = timesim.load_hwconfig(None, sets)
    local = timesim.simulate(hw, trace, out=tmp_path / "local")
    dist = timesim.simulate(hw, trace, out=tmp_path / "dist", scheduler=client)
    same_run(tmp_path / "local", tmp_path / "dist", local, dist)
    assert len(dist["run"]["shards"]) == 2
    assert not (tmp_path / "dist" / "shards").exists()


def test_sharded_trace_directory_and_shard_resume(client, tmp_path):
    """A trace directory every worker reads; one shard 'lost' after 96 iterations keeps its
    checkpoint, and --resume continues it from there to the local result."""
    hw = timesim.load_hwconfig(None, ["controller.interval=32"])
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "200",
                             "--chunk", "16", "--out", str(tmp_path / "t")]) == 0
    trace = str(tmp_path / "t")
    local = timesim.simulate(hw, trace, out=tmp_path / "local")
    out = tmp_path / "dist"
    fp = run_fingerprint(hw, trace_fingerprint(open_trace(trace)))
    groups = partition([layer.cells for layer in open_trace(trace).meta.layers], 2)
    lost = client.submit(run_shard, hw, str(Path(trace).resolve()), groups[0], 0, str(out),
                         32, False, fp, 1, 96, simulation=Simulation, pure=False)
    with pytest.raises(SimulationError, match="stopped after 96"):
        lost.result()
    assert (out / "shards" / "shard-0.npz").is_file()
    dist = timesim.simulate(hw, trace, out=out, scheduler=client, checkpoint_every=32,
                            resume=True)
    same_run(tmp_path / "local", out, local, dist)
    resumed = {s["resumed_from"] for s in dist["run"]["shards"]}
    assert resumed == {0, 64}          # its last checkpoint before it was lost


def test_partition_balances_cells():
    cells = [100, 90, 40, 30, 20, 10, 5]
    groups = partition(cells, 2)
    loads = sorted(sum(cells[i] for i in g) for g in groups)
    assert loads == [145, 150]                       # greedy, largest first
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert sorted(partition(cells, 10)) == [[i] for i in range(7)]


def test_merge_signatures_against_per_iteration_concatenation():
    rng = np.random.default_rng(0)
    T = 50
    layers = [[0, 2], [1]]
    per_it = rng.integers(0, 3, size=(T, 3, 3))     # (iteration, ops/swaps/slots, layer)
    results = []
    for g in layers:
        rows = np.concatenate([per_it[:, 0, g], per_it[:, 1, g], per_it[:, 2, g]], axis=1)
        change = np.ones(T, bool)
        change[1:] = (rows[1:] != rows[:-1]).any(axis=1)
        results.append({"layers": g, "starts": np.flatnonzero(change), "rows": rows[change]})
    ops, swaps, slots, counts = merge_signatures(results, 3, T)
    assert counts.sum() == T
    expanded = [np.repeat(x, counts, axis=0) for x in (ops, swaps, slots)]
    for j, x in enumerate(expanded):
        assert np.array_equal(x, per_it[:, j, :])


def test_a_shard_resumed_under_another_chip_names_the_keys(tmp_path):
    """A shard's checkpoint keeps its chip, so a refused resume names what differs (as a local
    run's does), not only "other arguments"."""
    spec = "synth:mlp-small?iterations=64&chunk=8"
    hw = timesim.load_hwconfig(None, ["controller.interval=16"])
    other = timesim.load_hwconfig(None, ["controller.interval=32"])

    def shard(h, **kw):
        fp = run_fingerprint(h, trace_fingerprint(open_trace(spec)))
        return run_shard(h, spec, [0, 1], 0, out=str(tmp_path), checkpoint_every=8,
                         fingerprint=fp, simulation=Simulation, **kw)

    with pytest.raises(SimulationError, match="stopped after"):
        shard(hw, stop_after=24)
    with pytest.raises(SimulationError, match=r"other hwconfig values \(controller.interval: "
                                              r"16 -> 32\)"):
        shard(other, resume=True)
    assert shard(hw, resume=True)["resumed_from"] >= 16         # the same chip continues

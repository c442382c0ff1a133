"""The closed loop (synth:fit?...&loop=on, kernels/loop.py, trace/loopfit.py): the kernels
against a numpy reference of the loop on the open stream, the fit of (h, κ, ρ) from a dense
recording of known dynamics, and the run contract (chunking, threads, --resume, Dask)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

import timesim
from timesim import checkpoint
from timesim.cli import main
from timesim.errors import TraceError
from timesim.kernels import loop as L
from timesim.simulate import Simulation
from timesim.trace import TraceWriter, open_trace
from timesim.trace.fit import fit_trace
from timesim.trace.fitted import FittedTrace, write_model
from timesim.trace.format import LayerInfo
from timesim.trace.loopfit import arma_r1, loop_params

from .test_fit import model_doc


def test_deps_hash_is_current():
    k = Path(L.__file__).parent
    digest = hashlib.sha256((k / "select.py").read_bytes()
                            + (k / "generate.py").read_bytes()).hexdigest()
    assert L._DEPS_SHA256 == digest, (
        f"kernels/select.py or generate.py changed: set _DEPS_SHA256 = {digest!r} in "
        f"kernels/loop.py")


def loop_model(path, rng, kappa=0.4, rho=0.9, rows=48, cols=32, bias=0.2, kappa_cell=0.1,
               rho_cell=0.8):
    doc = model_doc(rows=rows, cols=cols, bias=bias)
    doc["layers"][0]["loop"] = {"kappa": kappa, "rho": rho, "kappa_cell": kappa_cell,
                                "rho_cell": rho_cell}
    h = np.abs(rng.standard_normal(rows)) + 0.1
    h /= np.sqrt((h * h).sum())
    write_model(path, doc, {"w/row": np.exp(rng.standard_normal(rows)).astype(np.float32),
                            "w/col": np.exp(0.5 * rng.standard_normal(cols)).astype(np.float32),
                            "w/loop_h": h.astype(np.float32)})
    return h.astype(np.float32)


def reference(model, sets, n, k=None):
    """numpy: the open stream (the unfused generator, loop off) plus h_r·f_c, accumulated,
    selected and written as select.py's policies do, f updated by the writes."""
    stream = np.concatenate([np.array(c.arrays["w"]) for c in
                             open_trace(f"synth:fit?model={model}&iterations={n}").chunks()])
    fitted = FittedTrace(str(model), iterations=n)
    h, rho, kappa, kc, rc = fitted.fitted[0].loop
    rows, cols = stream.shape[1:]
    A = np.zeros((rows, cols), np.float32)
    E = np.zeros((rows, cols), np.float32)
    f = np.zeros(cols, np.float32)
    writes = np.zeros((rows, cols), np.int64)
    for t in range(n):
        A += (stream[t] + h[:, None] * f[None, :]) + E
        E *= rc
        w = np.zeros(cols, np.float32)
        mag = np.abs(A)
        if sets == "topk":
            order = np.lexsort((np.arange(rows * cols), -mag.ravel()))[:k]
            cells = [divmod(int(j), cols) for j in np.sort(order)]
        elif sets == "sgs-row":
            r = int(np.argmax(mag.max(1)))
            cells = [(r, c) for c in range(cols)]
        else:
            j = int(np.argmax(mag.ravel()))
            cells = [divmod(j, cols)]
        for r, c in cells:
            w[c] += h[r] * A[r, c]
            E[r, c] -= kc * A[r, c]
            A[r, c] = 0
            writes[r, c] += 1
        f = rho * f - kappa * w
    return writes, f, E


@pytest.mark.parametrize("selection", ["topk", "sgs-row", "sgs-element"])
def test_loop_kernels_against_numpy(tmp_path, selection):
    loop_model(tmp_path / "m.yaml", np.random.default_rng(1))
    model = tmp_path / "m.yaml"
    hw = timesim.load_hwconfig(None, [f"controller.selection={selection}",
                                      "controller.wear_leveling=none",
                                      "controller.topk_density=0.01"])
    n = 120
    pol = run_policy(hw, f"synth:fit?model={model}&iterations={n}&loop=on&chunk=16")
    want, f, E = reference(model, selection, n, k=pol.k)
    np.testing.assert_array_equal(pol.writes, want)
    np.testing.assert_array_equal(pol.loop_f, f)
    np.testing.assert_array_equal(pol.loop_e, E)
    assert np.abs(E).max() > 0 and np.abs(f).max() > 0
    # the loop changes what is written, and with κ = 0 it is the open loop exactly
    open_ = run_policy(hw, f"synth:fit?model={model}&iterations={n}").writes
    assert not np.array_equal(pol.writes, open_)
    doc = yaml.safe_load(model.read_text())
    doc["layers"][0]["loop"]["kappa"] = doc["layers"][0]["loop"]["kappa_cell"] = 0.0
    (tmp_path / "k0.yaml").write_text(yaml.safe_dump(doc))
    zero = run_policy(hw, f"synth:fit?model={tmp_path / 'k0.yaml'}&iterations={n}&loop=on")
    np.testing.assert_array_equal(zero.writes, open_)


def run_policy(hw, src):
    trace = open_trace(src)
    sim = Simulation(hw, trace.meta)
    for ch in trace.chunks():
        sim.feed(ch.arrays, ch.t0, ch.n)
    pol = sim.policies[0]
    pol.finish()
    return pol


def dense_recording(path, h, kappa, rho, n=1500, cols=64, seed=0, kc=0.0, rc=0.0):
    """A 'dense recording' of the loop's own dynamics: every gradient written."""
    rng = np.random.default_rng(seed)
    rows = h.shape[0]
    s = np.exp(0.5 * rng.standard_normal(rows))
    f = np.zeros(cols)
    E = np.zeros((rows, cols))
    layer = LayerInfo("w", "linear", rows, cols)
    with TraceWriter(path, [layer], model="toy", source="test", dtype="float32",
                     chunk_iterations=100) as w:
        for _ in range(0, n, 100):
            out = np.empty((100, rows, cols), np.float32)
            for i in range(100):
                g = 0.3 * s[:, None] * rng.standard_normal((rows, cols)) \
                    + h[:, None] * rng.standard_normal(cols)[None, :] + h[:, None] * f + E
                out[i] = g
                f = rho * f - kappa * (h @ g)
                E = rc * E - kc * (g - np.outer(h, h @ g))
            w.append_chunk({"w": out})
    return path


def test_fit_recovers_a_known_loop(tmp_path):
    rng = np.random.default_rng(2)
    h = np.abs(rng.standard_normal(40)) + 0.2
    h /= np.sqrt((h * h).sum())
    dense_recording(tmp_path / "t", h, kappa=0.35, rho=0.9)
    doc, arrays = fit_trace(str(tmp_path / "t"), start=0.0)
    lp = doc["layers"][0]["loop"]
    assert abs(float(np.dot(arrays["w/loop_h"], h))) > 0.99
    assert lp["kappa"] == pytest.approx(0.35, abs=0.06)
    assert lp["fit"]["rho_fit"] == pytest.approx(0.9, abs=0.06)
    # the persistence the kernels use: the answer to one write at most half the write
    assert lp["rho"] == pytest.approx(max(0, min(lp["fit"]["rho_fit"], 1 - 2 * lp["kappa"])),
                                      abs=1e-3)
    lo, hi = lp["fit"]["spread"]["kappa"]
    assert lo <= lp["kappa"] + 0.02 and hi >= lp["kappa"] - 0.02 and hi - lo < 0.2
    assert 0 < lp["fit"]["explained"] <= 1
    assert lp["kappa_cell"] < 0.05              # what h leaves is white noise here


def test_arma_inversion_by_hand():
    """r_1 of the ARMA(1, 1) against a long simulation, and the fit's inversion."""
    rng = np.random.default_rng(3)
    phi, rho = 0.5, 0.9
    y = rng.standard_normal(400000)
    Y = np.zeros_like(y)
    for t in range(1, len(y)):
        Y[t] = phi * Y[t - 1] + y[t] - rho * y[t - 1]
    Y -= Y.mean()
    r = np.array([(Y[:-k] * Y[k:]).mean() / (Y * Y).mean() for k in range(1, 33)])
    assert r[0] == pytest.approx(arma_r1(phi, rho), abs=0.01)
    p = loop_params(r)
    assert p["phi"] == pytest.approx(phi, abs=0.05)
    assert p["rho_fit"] == pytest.approx(rho, abs=0.05)
    assert p["rho"] == max(0.0, min(p["rho_fit"], 1 - 2 * p["kappa"]))
    assert p["kappa"] == min(p["kappa_fit"], 0.5)
    assert p["kappa"] == pytest.approx(rho - phi, abs=0.07)
    # no reversion: κ = 0
    assert loop_params(np.zeros(32))["kappa"] == 0.0


@pytest.mark.parametrize("sets", [["controller.selection=topk", "controller.wear_leveling=none"],
                                  ["controller.selection=sgs", "controller.interval=16"]])
def test_loop_run_is_the_same_for_any_chunking_threads_and_resume(tmp_path, monkeypatch, sets):
    loop_model(tmp_path / "m.yaml", np.random.default_rng(4))
    doc = yaml.safe_load((tmp_path / "m.yaml").read_text())
    doc["layers"].append(dict(doc["layers"][0], layer={"name": "v", "kind": "linear",
                                                       "rows": 48, "cols": 32}))
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update({k.replace("w/", "v/"): v[::-1].copy() for k, v in arrays.items()})
    write_model(tmp_path / "m2.yaml", doc, arrays)
    src = f"synth:fit?model={tmp_path / 'm2.yaml'}&iterations=200&loop=on"
    hw = timesim.load_hwconfig(None, sets + ["controller.topk_density=0.01"])
    base = timesim.simulate(hw, src + "&chunk=64", out=tmp_path / "a")
    for kw, s in (({}, "&chunk=7"), ({"threads": 2}, "&chunk=13")):
        other = timesim.simulate(hw, src + s, out=tmp_path / f"b{len(kw)}", **kw)
        assert other["writes"] == base["writes"] and other["ars"] == base["ars"]
        for name in ("w", "v"):
            np.testing.assert_array_equal(np.load(tmp_path / "a" / "writes" / f"{name}.npy"),
                                          np.load(tmp_path / f"b{len(kw)}" / "writes" /
                                                  f"{name}.npy"))

    class Crash(Exception):
        pass

    def crash(self, *a, **k):
        raise Crash()

    monkeypatch.setattr(Simulation, "finish", crash)
    with pytest.raises(Crash):
        timesim.simulate(hw, src + "&chunk=8", out=tmp_path / "r", checkpoint_every=5)
    monkeypatch.undo()
    assert (tmp_path / "r" / checkpoint.NAME).exists()
    resumed = timesim.simulate(hw, src + "&chunk=8", out=tmp_path / "r", checkpoint_every=5,
                               resume=True)
    assert resumed["writes"] == base["writes"]
    # and the open loop differs: the loop is in the run
    assert timesim.simulate(hw, src.replace("&loop=on", ""))["writes"] != base["writes"]


def test_loop_errors_are_one_line(tmp_path, capsys):
    loop_model(tmp_path / "m.yaml", np.random.default_rng(5))
    doc = yaml.safe_load((tmp_path / "m.yaml").read_text())
    doc["layers"][0].pop("loop")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match="loop: expected a mapping"):
        FittedTrace(str(tmp_path / "old.yaml"))
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "w/loop_h"}
    write_model(tmp_path / "old.yaml", doc, arrays)       # fitted before the loop
    FittedTrace(str(tmp_path / "old.yaml"))
    with pytest.raises(TraceError, match="no closed-loop parameters"):
        FittedTrace(str(tmp_path / "old.yaml"), loop="on")
    with pytest.raises(TraceError, match="loop: expected on or off"):
        FittedTrace(str(tmp_path / "m.yaml"), loop="maybe")
    t = open_trace(f"synth:fit?model={tmp_path / 'm.yaml'}&iterations=20&loop=on")
    with pytest.raises(TraceError, match="function of the run"):
        t.generate(0, 0, 4)
    assert main(["run", "--trace", f"synth:fit?model={tmp_path / 'm.yaml'}&loop=sometimes"]) == 2
    assert main(["run", "--trace", f"synth:fit?model={tmp_path / 'old.yaml'}&loop=on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("timesim: error:") for line in err)


def test_sharded_loop_run_equals_local(tmp_path):
    """Dask: each worker runs whole layers, the loop's state with them."""
    distributed = pytest.importorskip("distributed")
    loop_model(tmp_path / "m.yaml", np.random.default_rng(6))
    doc = yaml.safe_load((tmp_path / "m.yaml").read_text())
    doc["layers"].append(dict(doc["layers"][0], layer={"name": "v", "kind": "linear",
                                                       "rows": 40, "cols": 24}))
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update({"v/row": arrays["w/row"][:40], "v/col": arrays["w/col"][:24],
                   "v/loop_h": arrays["w/loop_h"][:40]})
    write_model(tmp_path / "m2.yaml", doc, arrays)
    src = f"synth:fit?model={tmp_path / 'm2.yaml'}&iterations=150&chunk=16&loop=on"
    hw = timesim.load_hwconfig(None, ["controller.selection=topk", "controller.topk_density=0.01",
                                      "controller.wear_leveling=none"])
    local = timesim.simulate(hw, src, out=tmp_path / "local")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    try:
        with distributed.Client(cluster) as client:
            dist = timesim.simulate(hw, src, out=tmp_path / "dist", scheduler=client)
    finally:
        cluster.close()
    assert dist["writes"] == local["writes"] and len(dist["run"]["shards"]) == 2
    for name in ("w", "v"):
        np.testing.assert_array_equal(np.load(tmp_path / "local" / "writes" / f"{name}.npy"),
                                      np.load(tmp_path / "dist" / "writes" / f"{name}.npy"))


def test_fit_recovers_a_known_cell_loop(tmp_path):
    """Each cell answering its own (dense) writes beside the column state: κ_cell, ρ_cell."""
    rng = np.random.default_rng(7)
    h = np.abs(rng.standard_normal(40)) + 0.2
    h /= np.sqrt((h * h).sum())
    dense_recording(tmp_path / "t", h, kappa=0.35, rho=0.9, kc=0.3, rc=0.8, n=1200)
    lp = fit_trace(str(tmp_path / "t"), start=0.0)[0]["layers"][0]["loop"]
    assert lp["kappa_cell"] == pytest.approx(0.3, abs=0.08)
    assert lp["fit_cell"]["kappa_fit"] == lp["kappa_cell"]          # below the bound
    assert lp["fit_cell"]["rho_fit"] == pytest.approx(0.8, abs=0.08)
    assert lp["rho_cell"] == pytest.approx(max(0, min(lp["fit_cell"]["rho_fit"],
                                                      1 - 2 * lp["kappa_cell"])), abs=1e-3)
    assert lp["kappa"] == pytest.approx(0.35, abs=0.08)


def test_fit_bounds_memory_on_wide_layers(tmp_path, monkeypatch):
    """Beyond MAX_COV_ROWS rows h comes from the rows' mean squares, beyond MAX_CELLS cells
    the cell acf from an even stride of cells: the same loop, roughly."""
    from timesim.trace import loopfit

    rng = np.random.default_rng(8)
    h = np.abs(rng.standard_normal(40)) + 0.2
    h /= np.sqrt((h * h).sum())
    dense_recording(tmp_path / "t", h, kappa=0.35, rho=0.9, kc=0.3, rc=0.8, n=1200)
    full = fit_trace(str(tmp_path / "t"), start=0.0)[0]["layers"][0]["loop"]
    monkeypatch.setattr(loopfit, "MAX_COV_ROWS", 8)
    monkeypatch.setattr(loopfit, "MAX_CELLS", 500)
    doc, arrays = fit_trace(str(tmp_path / "t"), start=0.0)
    lp = doc["layers"][0]["loop"]
    assert lp["fit"]["direction"] == "row rms" and full["fit"]["direction"] == "eigenvector"
    assert float(np.dot(arrays["w/loop_h"], h)) > 0.8      # the rows' own noise is in it too
    assert lp["kappa_cell"] == pytest.approx(full["kappa_cell"], abs=0.08)
    assert lp["kappa"] == pytest.approx(full["kappa"], abs=0.1)
    assert 0 < lp["fit"]["explained"] < full["fit"]["explained"] + 1e-9

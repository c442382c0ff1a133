"""Fitted workloads: the keyframe drift, the scale schedule, fitting a trace of known
parameters back, replay determinism, the distribution view, and bad models."""

import math

import numpy as np
import pytest
import yaml

import timesim
from timesim.cli import main
from timesim.compare import wasserstein
from timesim.errors import TraceError
from timesim.trace import TraceWriter, open_trace
from timesim.trace.fit import fit_trace
from timesim.trace.fitted import (
    GATE_PROBS,
    PROFILES,
    FittedTrace,
    keyframe_correlation,
    load_model,
    write_model,
)


def test_keyframe_process_against_monte_carlo():
    """x(t) = cos(πf/2) K_j + sin(πf/2) K_{j+1}, simulated with numpy: unit variance at every
    phase, and the correlation the fit uses."""
    rng = np.random.default_rng(0)
    tau, n = 50.0, 40000
    frames = rng.standard_normal((n, 8))

    def x(t):
        j, f = int(t // tau), (t % tau) / tau
        return (math.cos(math.pi * f / 2) * frames[:, j]
                + math.sin(math.pi * f / 2) * frames[:, j + 1])

    for t in (0, 12, 37, 99):
        assert abs(x(t).var() - 1) < 0.03
    for lag in (10, 40, 75, 120):
        emp = np.mean([np.mean(x(t) * x(t + lag)) for t in np.arange(0, 100, 2.5)])
        assert abs(emp - keyframe_correlation(lag, tau)) < 0.03, lag
    assert keyframe_correlation(0, tau) == pytest.approx(1.0)
    assert keyframe_correlation(2 * tau, tau) == 0.0


def model_doc(rows=48, cols=32, bias=0.4, tau=1e9, drift=0.0, gamma=0.0):
    return {"format": "timesim-fit", "version": 1, "model": "toy", "dataset": "", "batch_size": 8,
            "source": {"trace": "", "iterations": 1000},
            "layers": [{"layer": {"name": "w", "kind": "linear", "rows": rows, "cols": cols},
                        "bias": bias, "bias_exponent": 0.0, "tau_direction": tau,
                        "row_drift": drift, "col_drift": 0.0, "tau_importance": 200.0,
                        "scale": {"knots": [[0, 1e-3], [1000, 1e-3]], "gamma": gamma}}]}


def write_toy(path, rng, **kw):
    doc = model_doc(**kw)
    rows, cols = doc["layers"][0]["layer"]["rows"], doc["layers"][0]["layer"]["cols"]
    row = np.exp(rng.standard_normal(rows)).astype(np.float32)
    col = np.exp(0.5 * rng.standard_normal(cols)).astype(np.float32)
    write_model(path, doc, {"w/row": row, "w/col": col})
    return row, col


def record(model_path, out, iterations):
    synth = FittedTrace(str(model_path), iterations=iterations, seed=3, chunk=64)
    with TraceWriter(out, synth.meta.layers, model="toy", source="test", dtype="float32",
                     chunk_iterations=64) as w:
        for ch in synth.chunks():
            w.append_chunk(ch.arrays)
    return out


def test_sigma_schedule_by_hand(tmp_path):
    doc = model_doc()
    doc["layers"][0]["scale"] = {"knots": [[10, 1.0], [30, 4.0]], "gamma": 1.0}
    write_model(tmp_path / "m.yaml", doc, {"w/row": np.ones(48, np.float32),
                                            "w/col": np.ones(32, np.float32)})
    layer = load_model(tmp_path / "m.yaml")[1][0]
    s = layer.sigma(np.array([5.0, 20.0, 30.0, 61.0]))
    assert s == pytest.approx([1.0, 2.0, 4.0, 4.0 * 31 / 62])


def test_fit_recovers_known_parameters(tmp_path):
    rng = np.random.default_rng(1)
    row, col = write_toy(tmp_path / "true.yaml", rng, bias=0.4)
    record(tmp_path / "true.yaml", tmp_path / "t", 1200)
    doc, arrays = fit_trace(str(tmp_path / "t"), start=0.0)
    L = doc["layers"][0]
    assert L["bias"] == pytest.approx(0.4, rel=0.2)
    assert abs(L["scale"]["gamma"]) < 0.2
    assert L["row_drift"] < 0.15 and L["col_drift"] < 0.15
    assert L["tau_direction"] > 5000                  # persistent direction
    assert L["fit"]["importance_r2"] > 0.9
    assert np.corrcoef(np.log(arrays["w/row"]), np.log(row))[0, 1] > 0.98
    assert np.corrcoef(np.log(arrays["w/col"]), np.log(col))[0, 1] > 0.95
    g = arrays["w/row_gate"]                          # no gating in the truth: gates ~ 1
    assert g[0] > 0 and np.interp(0.5, GATE_PROBS, g) == pytest.approx(1.0, abs=0.2)
    assert L["fit"]["kurtosis"] < 4


def test_fit_sees_a_drifting_direction(tmp_path):
    write_toy(tmp_path / "true.yaml", np.random.default_rng(2), bias=1.0, tau=300.0)
    record(tmp_path / "true.yaml", tmp_path / "t", 1600)
    L = fit_trace(str(tmp_path / "t"), start=0.0)[0]["layers"][0]
    assert 150 < L["tau_direction"] < 600


def write_arrays(out, G, chunk=64):
    """A one-layer float32 trace of the gradients G (iterations, rows, cols)."""
    from timesim.trace.format import LayerInfo

    info = LayerInfo(name="w", kind="linear", rows=G.shape[1], cols=G.shape[2])
    with TraceWriter(out, [info], model="toy", source="test", dtype="float32",
                     chunk_iterations=chunk) as w:
        for t0 in range(0, len(G), chunk):
            w.append_chunk({"w": G[t0:t0 + chunk].astype(np.float32)})
    return out


def test_fit_reads_no_direction_into_loud_batches_that_push_back(tmp_path):
    """Near a minimum most batches push a weight one way and a few loud ones push it back: the
    gradients sum to 0 (the weight stays put). Per cell a sign d; quiet iterations (90%)
    g = z + 0.3 d, loud ones (10%, ten times the scale) g = 10 (z - 0.27 d): E[g] = 0 exactly.
    Normalised by each iteration's own scale the quiet push survives (checked here with numpy);
    the fit, which divides by the smoothed scale as its model does, must find no direction
    (it found b ~ 0.2 when it normalised per iteration)."""
    rng = np.random.default_rng(8)
    T, rows, cols = 1200, 32, 24
    d = np.where(rng.random((rows, cols)) < 0.5, -1.0, 1.0)
    loud = rng.random(T) < 0.1
    z = rng.standard_normal((T, rows, cols))
    G = np.where(loud[:, None, None], 10 * (z - 0.27 * d), z + 0.3 * d)
    s = np.sqrt((G ** 2).mean(axis=(1, 2)))
    assert abs((G.mean(0) * d).mean()) < 0.05                      # no push in the raw sum
    assert ((G / s[:, None, None]).mean(0) * d).mean() > 0.15      # per-iteration normalised
    L = fit_trace(str(write_arrays(tmp_path / "t", G)), start=0.0)[0]["layers"][0]
    assert L["bias"] < 0.05


def test_fit_reads_no_direction_into_short_lag_correlation(tmp_path):
    """Noise correlated over two iterations (an MA(2): ρ1 = 0.5, ρ2 = 0.2 of unit variance;
    the variance of its sums grows 1 + 2(ρ1 + ρ2) = 2.4 times faster than of iid noise): no
    direction, and the variance ratio over 128 iterations the hand-computed
    (128 + 2·(127·ρ1 + 126·ρ2)) / 128."""
    rng = np.random.default_rng(9)
    T, rows, cols = 1200, 32, 24
    e = rng.standard_normal((T + 2, rows, cols))
    a, b = 0.6, 0.3            # e_t + a e_{t-1} + b e_{t-2}: ρ1 = (a + ab)/(1 + a² + b²), ...
    G = (e[2:] + a * e[1:-1] + b * e[:-2]) / math.sqrt(1 + a * a + b * b)
    r1, r2 = (a + a * b) / (1 + a * a + b * b), b / (1 + a * a + b * b)
    L = fit_trace(str(write_arrays(tmp_path / "t", G)), start=0.0)[0]["layers"][0]
    assert L["bias"] < 0.05
    want = (128 + 2 * (127 * r1 + 126 * r2)) / 128
    assert L["fit"]["variance_ratio"]["real"] == pytest.approx(want, rel=0.1)


def test_variance_ratio_sees_gradients_that_revert(tmp_path):
    """g_t = (z_t - z_{t-16}) / √2 (a cell's summed gradient stays bounded): the variance of a
    sum over n ≥ 16 iterations is 16 / n times n's variance; the model, without reversion,
    says 1."""
    rng = np.random.default_rng(10)
    T, rows, cols = 1200, 32, 24
    z = rng.standard_normal((T + 16, rows, cols))
    G = (z[16:] - z[:-16]) / math.sqrt(2)
    L = fit_trace(str(write_arrays(tmp_path / "t", G)), start=0.0)[0]["layers"][0]
    vr = L["fit"]["variance_ratio"]
    assert vr["real"] == pytest.approx(16 / 128, abs=0.03)
    assert vr["model"] == pytest.approx(1.0, abs=0.1)


def test_replay_is_a_pure_function_of_seed_layer_iteration(tmp_path):
    write_toy(tmp_path / "m.yaml", np.random.default_rng(4), tau=40.0, drift=0.3, gamma=0.5)
    a = open_trace(f"synth:fit?model={tmp_path / 'm.yaml'}&iterations=150&chunk=64")
    b = open_trace(f"synth:fit?model={tmp_path / 'm.yaml'}&iterations=150&chunk=7")
    ga = np.concatenate([np.array(c.arrays["w"]) for c in a.chunks()])
    gb = np.concatenate([np.array(c.arrays["w"]) for c in b.chunks(start_chunk=0)])
    assert np.array_equal(ga, gb)
    late = list(b.chunks(start_chunk=10))[0]          # straight to iteration 70
    assert np.array_equal(np.array(late.arrays["w"]), ga[70:77])
    hw = timesim.load_hwconfig(None, ["controller.interval=16"])
    r1 = timesim.simulate(hw, a, fused=True)
    r2 = timesim.simulate(hw, b, fused=False)
    assert r1["writes"] == r2["writes"] and r1["ars"] == r2["ars"]


def test_bad_models_are_one_line_errors(tmp_path, capsys):
    write_toy(tmp_path / "m.yaml", np.random.default_rng(5))
    (tmp_path / "m.npz").write_bytes((tmp_path / "m.npz").read_bytes() + b"x")
    with pytest.raises(TraceError, match="sha256"):
        load_model(tmp_path / "m.yaml")
    write_toy(tmp_path / "m.yaml", np.random.default_rng(5))
    doc = yaml.safe_load((tmp_path / "m.yaml").read_text())
    for source, needle in (("text", "source: expected a mapping"),
                           ({**doc["source"], "updates": "bogus"}, "source.updates: must be "
                                                                    "one of dense|topk")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**doc, "source": source}))
        with pytest.raises(TraceError, match=needle):
            load_model(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(
        {**doc, "source": {k: v for k, v in doc["source"].items() if k != "iterations"}}))
    with pytest.raises(TraceError, match="source.iterations: missing"):
        open_trace(f"synth:fit?model={tmp_path / 'bad.yaml'}")
    doc["layers"][0]["bias"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match="layer w: bias: expected a number"):
        load_model(tmp_path / "bad.yaml")
    for table in ([[0.5, 0.1], [0.2, 0.1]], [[0.5, -0.1]], [[0.5]], "x", [[0, 0.1]]):
        doc["layers"][0]["bias"] = 0.1
        doc["layers"][0]["bias_by_rms"] = table
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(TraceError, match="layer w: bias_by_rms: expected"):
            load_model(tmp_path / "bad.yaml")
    # a damaged archive whose checksum was edited to match, and NaN importances
    import hashlib

    doc["layers"][0].pop("bias_by_rms")
    for name, blob in (("junk.npz", b"not an npz archive"), ("nan.npz", None)):
        if blob is None:
            with np.load(tmp_path / "m.npz") as z:
                arrays = {k: z[k] for k in z.files}
            arrays["w/row"] = arrays["w/row"].copy()
            arrays["w/row"][0] = np.nan
            np.savez(tmp_path / name, **arrays)
            blob = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(blob)
        doc["importances"], doc["importances_sha256"] = name, hashlib.sha256(blob).hexdigest()
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(TraceError, match="not a readable .npz|importances: expected finite"):
            load_model(tmp_path / "bad.yaml")
    (tmp_path / "m.npz").unlink()
    with pytest.raises(TraceError, match="m.npz is missing"):
        load_model(tmp_path / "m.yaml")
    assert main(["run", "--trace", f"synth:fit?model={tmp_path / 'none.yaml'}"]) == 2
    assert main(["run", "--trace", "synth:fit?iterations=5"]) == 2
    assert main(["trace", "fit", str(tmp_path), "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("timesim: error:") for line in err)


def test_trace_fit_cli_end_to_end(tmp_path, capsys):
    write_toy(tmp_path / "true.yaml", np.random.default_rng(6), bias=0.3)
    record(tmp_path / "true.yaml", tmp_path / "t", 256)
    assert main(["trace", "fit", str(tmp_path / "t"), "--out", str(tmp_path / "fit.yaml")]) == 0
    assert (tmp_path / "fit.npz").is_file()
    out = capsys.readouterr().out
    assert "bias" in out and "synth:fit?model=" in out
    assert main(["run", "--trace", f"synth:fit?model={tmp_path / 'fit.yaml'}&iterations=300",
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["compare", str(tmp_path / "run"), str(tmp_path / "run"), "--quantiles"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1].split()
    assert "w1/mean" in out and last[1] == "w" and float(last[-1]) == 0.0


def test_wasserstein_against_hand_and_quantile_integral():
    assert wasserstein(np.array([0, 0, 3]), np.array([1, 1, 1])) == pytest.approx(4 / 3)
    assert wasserstein(np.array([5]), np.array([2, 8])) == pytest.approx(3.0)
    rng = np.random.default_rng(7)
    a, b = rng.poisson(20, 300), rng.poisson(25, 170)
    u = (np.arange(200000) + 0.5) / 200000          # W1 = ∫ |F_a^-1(u) - F_b^-1(u)| du
    qa = np.sort(a)[np.minimum((u * a.size).astype(int), a.size - 1)]
    qb = np.sort(b)[np.minimum((u * b.size).astype(int), b.size - 1)]
    assert wasserstein(a, b) == pytest.approx(np.abs(qa - qb).mean(), rel=1e-3)


def test_gate_draws_are_numpy_interp_of_python_uniforms():
    """Gates: two 32-bit uniforms per splitmix64 hash (Python ints here), then np.interp on
    the quantile table; scaled rows."""
    from timesim.kernels.synth import inverse_cdf_block

    from .reference import GOLDEN, M64, mix64

    rng = np.random.default_rng(8)
    table = np.sort(rng.lognormal(0, 1, GATE_PROBS.size))
    table[:5] = 0.0                                    # a mass at exactly 0
    seed, stream, t0, n, size = 3, 7, 10, 4, 301
    got = inverse_cdf_block(seed, stream, t0, n, size, GATE_PROBS, table, 96)
    for i in range(n):
        key = mix64((seed + GOLDEN) & M64)
        key = mix64(key ^ ((stream + GOLDEN) & M64))
        key = mix64(key ^ (((t0 + i) * GOLDEN) & M64))
        u = np.empty(size)
        for c in range(size):
            h = mix64((key + (c >> 1) * GOLDEN) & M64)
            u[c] = (((h >> 32) if c & 1 else (h & 0xFFFFFFFF)) + 0.5) / 2.0 ** 32
        want = np.interp(u, GATE_PROBS, table)
        assert np.allclose(got[i], want.astype(np.float32), rtol=1e-6, atol=1e-30)
        assert 0 < u.min() and u.max() < 1
    scaled = inverse_cdf_block(seed, stream, t0, n, size, GATE_PROBS, table, 96,
                               np.arange(n, dtype=float))
    assert np.allclose(scaled, got * np.arange(n)[:, None], rtol=1e-6)


def test_gate_draws_bit_for_bit_the_floating_point_lookup():
    """The kernel finds a draw's interval by integer arithmetic; the values must be bit for bit
    those of the floating-point form the fitted streams were defined with: y = u·96 in
    float64, k = min(⌊y⌋, 94), table[k] + (y − k)·step[k], and above probs[95] a scan of the
    finer tail; then scale[i]·imp[c]·value rounded to float32."""
    from timesim.kernels.synth import inverse_cdf_block

    from .reference import GOLDEN, M64, mix64

    rng = np.random.default_rng(21)
    table = np.sort(rng.lognormal(0, 1, GATE_PROBS.size))
    table[:9] = 0.0
    slope = np.diff(table) / np.diff(GATE_PROBS)
    step = np.diff(table[:96])
    seed, stream, t0, n, size = 12, 5, 1000, 6, 777
    scale = rng.random(n) + 0.5
    imp = rng.random((2, size)).astype(np.float32) + 0.5
    which = np.array([0, 1, 1, 0, 1, 0])
    got = inverse_cdf_block(seed, stream, t0, n, size, GATE_PROBS, table, 96, scale, imp,
                            which)
    tails = 0
    for i in range(n):
        key = mix64((seed + GOLDEN) & M64)
        key = mix64(key ^ ((stream + GOLDEN) & M64))
        key = mix64(key ^ (((t0 + i) * GOLDEN) & M64))
        for c in range(size):
            h = mix64((key + (c >> 1) * GOLDEN) & M64)
            u = (float((h >> 32) if c & 1 else (h & 0xFFFFFFFF)) + 0.5) * (1.0 / 2.0 ** 32)
            if u >= GATE_PROBS[95]:
                k = 95
                while k < GATE_PROBS.size - 2 and GATE_PROBS[k + 1] <= u:
                    k += 1
                v = table[k] + (u - GATE_PROBS[k]) * slope[k]
                tails += 1
            else:
                y = u * 96.0
                k = min(int(y), 94)
                v = table[k] + (y - float(k)) * step[k]
            want = np.float32(scale[i] * float(imp[which[i], c]) * v)
            assert got[i, c].view(np.int32) == want.view(np.int32), (i, c)
    assert tails > 20                                   # the tail branch was exercised
    # the integer test for the tail, on every 32-bit x around the boundary
    x = np.arange(int(95 / 96 * 2**32) - 5000, int(95 / 96 * 2**32) + 5000, dtype=np.uint64)
    k = ((2 * x + 1) * np.uint64(96)) >> np.uint64(33)
    assert ((k == 95) == ((x.astype(float) + 0.5) / 2.0**32 >= GATE_PROBS[95])).all()


def test_a_chunks_factors_in_one_call_are_the_separate_draws():
    """_fitted_factors: P = σ·importance·row gate, Q = importance·column gate, U = P·λ (one
    loudness draw per iteration, float32 product): the same as the three separate draws."""
    from timesim.kernels.synth import _fitted_factors, inverse_cdf_block

    rng = np.random.default_rng(4)
    tabs = [np.sort(rng.lognormal(0, s, GATE_PROBS.size)) for s in (0.5, 1.0, 0.7)]
    parts = [(t, np.diff(t) / np.diff(GATE_PROBS), np.diff(t[:96])) for t in tabs]
    n, rows, cols, seed, t0 = 37, 29, 11, 9, 4100
    sigma = rng.random(n) + 0.1
    rimp = rng.random((3, rows)).astype(np.float32)
    cimp = rng.random((2, cols)).astype(np.float32)
    rwhich, cwhich = rng.integers(0, 3, n), rng.integers(0, 2, n)
    P, U = np.empty((n, rows), np.float32), np.empty((n, rows), np.float32)
    Q = np.empty((n, cols), np.float32)
    _fitted_factors(seed, t0, GATE_PROBS, 96, sigma, 11, *parts[0], rimp, rwhich,
                    12, *parts[1], cimp, cwhich, 13, *parts[2], P, U, Q)
    want_p = inverse_cdf_block(seed, 11, t0, n, rows, GATE_PROBS, tabs[0], 96, sigma, rimp,
                               rwhich)
    want_q = inverse_cdf_block(seed, 12, t0, n, cols, GATE_PROBS, tabs[1], 96, None, cimp,
                               cwhich)
    lam = inverse_cdf_block(seed, 13, t0, n, 1, GATE_PROBS, tabs[2], 96)
    assert np.array_equal(P, want_p) and np.array_equal(Q, want_q)
    assert np.array_equal(U, want_p * lam)
    assert not np.array_equal(U, P)
    # no loudness table: U is left alone
    U2 = np.full((n, rows), -1.0, np.float32)
    _fitted_factors(seed, t0, GATE_PROBS, 96, sigma, 11, *parts[0], rimp, rwhich,
                    12, *parts[1], cimp, cwhich, 13, np.zeros(0), np.zeros(0), np.zeros(0),
                    P, U2, Q)
    assert (U2 == -1.0).all() and np.array_equal(P, want_p)


def test_profile_gives_the_papers_network_the_kind_parameters():
    """synth:MODEL?profile=digits: the network's shapes, each layer with its kind's bundled
    parameters; reproducible and resumable like every synthetic stream."""
    prof = yaml.safe_load((PROFILES / "digits.yaml").read_text())["kinds"]
    t = open_trace("synth:vgg11?profile=digits&iterations=40&chunk=16")
    plain = open_trace("synth:vgg11").meta.layers
    assert [(x.rows, x.cols) for x in t.meta.layers] == [(x.rows, x.cols) for x in plain]
    for layer in t.fitted:
        k = prof[layer.info.kind]
        assert layer.bias == k["bias"] and layer.tau_d == k["tau_direction"]
        assert np.array_equal(layer.row_gate, np.array(k["row_gate"]))
        dead = (layer.row == 0).mean()
        assert abs(dead - k["dead_rows"]) < 0.15 or layer.info.rows < 50
    a = np.array(next(iter(t.chunks(start_chunk=1))).arrays["fc.2"])
    b = open_trace("synth:vgg11?profile=digits&iterations=40&chunk=8")
    assert np.array_equal(a[:8], np.array(next(iter(b.chunks(start_chunk=2))).arrays["fc.2"]))
    with pytest.raises(TraceError, match="not with profile"):
        open_trace("synth:vgg11?profile=digits&row_sigma=1")
    with pytest.raises(TraceError, match="unknown"):
        open_trace("synth:vgg11?profile=cifar")


def test_a_layer_without_gradient_fits_to_finite_numbers(tmp_path):
    """A layer whose gradient is 0 in every recorded iteration (frozen in practice, or dead):
    its fit has no NaN anywhere (the direction's covariances were a mean over no cells), the
    other layer is fitted as usual, and the model replays."""
    from timesim.trace.format import LayerInfo

    rng = np.random.default_rng(12)
    layers = [LayerInfo(name="a", kind="linear", rows=8, cols=4),
              LayerInfo(name="z", kind="linear", rows=5, cols=3)]
    with TraceWriter(tmp_path / "t", layers, model="toy", source="test", dtype="float32",
                     chunk_iterations=16) as w:
        for _ in range(8):
            w.append_chunk({"a": rng.standard_normal((16, 8, 4)).astype(np.float32),
                            "z": np.zeros((16, 5, 3), np.float32)})
    doc, arrays = fit_trace(str(tmp_path / "t"))

    def numbers(x):
        if isinstance(x, dict):
            return [v for y in x.values() for v in numbers(y)]
        if isinstance(x, list):
            return [v for y in x for v in numbers(y)]
        return [x] if isinstance(x, float) else []

    z = doc["layers"][1]
    assert all(math.isfinite(v) for v in numbers(z)), z
    assert z["bias"] == 0.0 and z["fit"]["variance_ratio"]["real"] == 1.0
    write_model(tmp_path / "m.yaml", doc, arrays)
    t = open_trace(f"synth:fit?model={tmp_path / 'm.yaml'}&iterations=40")
    got = {k: np.asarray(v).copy() for ch in t.chunks() for k, v in ch.arrays.items()}
    assert not got["z"].any() and np.isfinite(got["a"]).all()


def _cell_kurtosis(X):
    """Each cell's E[x⁴] / E[x²]², power-weighted over the cells (as the fit reports it)."""
    p2, p4 = (X ** 2).mean(0), (X ** 4).mean(0)
    ok = p2 > 0
    return float((p4[ok] / p2[ok]).sum() / p2[ok].sum())


def _replay(model_path, layer_index, T):
    synth = FittedTrace(str(model_path), iterations=T, seed=5, chunk=100)
    return np.concatenate([synth.generate(layer_index, t0, min(100, T - t0)).astype(np.float64)
                           for t0 in range(0, T, 100)])


def test_direction_strength_by_rms_is_measured_bin_by_bin(tmp_path):
    """Cells' RMS spread over four decades; the quieter half of the cells has a persistent push
    of strength 0.3 against its noise, the louder half none (as the digits recordings show: a
    push of similar strength in the quiet cells, none in the loudest). The fit's table must say
    so, and the replayed model must carry a mean where the recording has one and none where
    it has none; a power law of b in the RMS cannot (its β would blow the quietest cells up)."""
    rng = np.random.default_rng(11)
    T, rows, cols = 1200, 40, 30
    rms = np.exp(rng.normal(0, 1.2, rows))[:, None] * np.exp(rng.normal(0, 1.2, cols))[None]
    quiet = rms < np.median(rms)
    d = np.where(rng.random((rows, cols)) < 0.5, -1.0, 1.0)
    G = rms * (rng.standard_normal((T, rows, cols)) + np.where(quiet, 0.3 * d, 0.0))
    doc, arrays = fit_trace(str(write_arrays(tmp_path / "t", G)), start=0.0)
    table = np.array(doc["layers"][0]["bias_by_rms"])
    assert len(table) == 8 and (np.diff(table[:, 0]) > 0).all()
    assert table[:3, 1] == pytest.approx(0.3, abs=0.08)         # the quiet bins
    assert (table[-3:, 1] < 0.06).all()                          # the loud bins
    write_model(tmp_path / "m.yaml", doc, arrays)
    X = _replay(tmp_path / "m.yaml", 0, T)
    # the mean against the noise, per cell (the model's direction is its own, not d; the
    # sampling noise of a mean over T iterations, 1 / T, taken out)
    share2 = (X.mean(0) / X.std(0)) ** 2 - 1 / T
    assert math.sqrt(share2[quiet].mean()) == pytest.approx(0.3, abs=0.08)
    assert share2[~quiet].mean() < 0.05 ** 2


def test_gates_are_tempered_to_the_recorded_cell_kurtosis(tmp_path):
    """A rank-one batch gradient g = (s_r x_r)(q_c y_c), x and y standard normal each
    iteration: a cell's kurtosis is 3 · 3 = 9, and a row's RMS already holds x_r. Gates measured
    as they are, times fresh noise, would give cells about 3 · 3 · 2.7; the fit tempers them
    (α < 1) and the replayed cells must have the recording's kurtosis."""
    rng = np.random.default_rng(12)
    T, rows, cols = 1200, 32, 24
    s, q = np.exp(rng.normal(0, 0.5, rows)), np.exp(rng.normal(0, 0.5, cols))
    x, y = s * rng.standard_normal((T, rows)), q * rng.standard_normal((T, cols))
    G = x[:, :, None] * y[:, None, :]
    assert _cell_kurtosis(G) == pytest.approx(9, rel=0.15)
    doc, arrays = fit_trace(str(write_arrays(tmp_path / "t", G)), start=0.0)
    f = doc["layers"][0]["fit"]
    assert f["gate_exponent"] < 0.9
    h = G / np.sqrt((G ** 2).mean(axis=(1, 2)))[:, None, None]    # each iteration's own scale
    assert f["kurtosis"] == pytest.approx(_cell_kurtosis(h), rel=0.05)
    assert f["kurtosis_raw"] == pytest.approx(_cell_kurtosis(G), rel=0.05)
    write_model(tmp_path / "m.yaml", doc, arrays)
    X = _replay(tmp_path / "m.yaml", 0, T)
    assert _cell_kurtosis(X) == pytest.approx(_cell_kurtosis(G), rel=0.2)


def test_loudness_of_the_batch_is_shared_by_the_layer(tmp_path):
    """Every cell of iteration t scaled by one lognormal λ_t (log-sd 0.5: a loud batch makes
    the whole layer loud): the replayed stream has the same spread of per-iteration scale
    and each cell the recorded kurtosis 3·E[λ⁴]/E[λ²]² = 3·e^(4·0.25) ≈ 8.2."""
    rng = np.random.default_rng(13)
    T, rows, cols = 1600, 32, 24
    lam = np.exp(0.5 * rng.standard_normal(T))
    G = lam[:, None, None] * rng.standard_normal((T, rows, cols))
    doc, arrays = fit_trace(str(write_arrays(tmp_path / "t", G)), start=0.0)
    f = doc["layers"][0]["fit"]
    assert f["kurtosis_raw"] == pytest.approx(3 * math.e, rel=0.2)
    write_model(tmp_path / "m.yaml", doc, arrays)
    X = _replay(tmp_path / "m.yaml", 0, T)
    s = np.sqrt((X ** 2).mean(axis=(1, 2)))
    assert np.log(s).std() == pytest.approx(0.5, abs=0.06)
    assert _cell_kurtosis(X) == pytest.approx(3 * math.e, rel=0.2)
    assert f["kurtosis_raw_model"] == pytest.approx(3 * math.e, rel=0.2)


def test_tempering_keeps_a_gates_exact_zeros():
    """A row with no gradient in an iteration (its gate 0, 20% of the draws here) stays without
    one however far the spread is tempered; the rest is rescaled to unit power. Asked for less
    kurtosis than the zeros allow, the gate goes flat but keeps them."""
    from timesim.trace.fit import _temper_gates
    from timesim.trace.fitted import gate_moments

    row = np.where(GATE_PROBS < 0.2, 0.0, np.exp(3 * (GATE_PROBS - 0.6)))
    row = row / math.sqrt(gate_moments(row)[1])
    col = np.ones_like(GATE_PROBS)
    for want in (3.4, 2.9):
        r, c, alpha = _temper_gates(row, col, 0.0, want)
        assert alpha < 1
        assert (r[GATE_PROBS < 0.2] == 0).all() and (r[GATE_PROBS > 0.21] > 0).all()
        assert gate_moments(r)[1] == pytest.approx(1.0, rel=1e-6)
        # E[g⁴] / E[g²]² of a gate that is 0 with probability 0.2 and flat otherwise: 1 / 0.8
        assert gate_moments(r)[2] * 2.7 == pytest.approx(max(want, 2.7 / 0.8), rel=0.02)


def test_a_fit_carries_what_its_recording_did_not_map(tmp_path):
    """The recording's skipped modules and its attention work (manifest ``skipped``,
    ``left_out``) go into the fitted model: a replay of the fit reports, times and covers them
    as a replay of the recording does (a transformer's fit must not drop its attention)."""
    from timesim.trace.format import LayerInfo

    layers = [LayerInfo(name="enc.attn.in_proj", kind="linear", rows=16, cols=48,
                        vectors_per_sample=10),
              LayerInfo(name="enc.attn.out_proj", kind="linear", rows=16, cols=16,
                        vectors_per_sample=10),
              LayerInfo(name="head", kind="linear", rows=16, cols=4)]
    skipped = ({"name": "emb", "reason": "nn.Embedding: a lookup, not a matrix product",
                "parameters": 640},)
    left_out = ({"name": "enc.attn", "work": "attention scores and context", "macs": 12000},)
    rng = np.random.default_rng(2)
    with TraceWriter(tmp_path / "t", layers, model="tfm", source="test", batch_size=2,
                     chunk_iterations=32) as w:
        w.skipped, w.left_out = skipped, left_out
        for _ in range(128):
            w.append({info.name: rng.standard_normal((info.rows, info.cols)).astype(np.float32)
                      for info in layers})
    assert main(["trace", "fit", str(tmp_path / "t"), "--out", str(tmp_path / "fit.yaml")]) == 0
    from timesim.config import bundled_hwconfig

    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), ["attention.macs_per_cycle=300"])
    real = timesim.simulate(hw, str(tmp_path / "t"))
    fit = timesim.simulate(hw, f"synth:fit?model={tmp_path / 'fit.yaml'}&iterations=128")
    assert real["skipped"] == list(skipped) and real["digital"][0]["macs"] == 12000
    for key in ("skipped", "digital", "left_out", "coverage"):
        assert fit[key] == real[key], key
    assert fit["energy_j"]["by_component"]["attention"] == pytest.approx(
        real["energy_j"]["by_component"]["attention"], rel=1e-12)
    assert fit["area_mm2"]["total"] == pytest.approx(real["area_mm2"]["total"], rel=1e-12)
    doc = yaml.safe_load((tmp_path / "fit.yaml").read_text())
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump({**doc, "left_out": [{"macs": "x"}]}))
    with pytest.raises(TraceError, match="left_out"):
        load_model(tmp_path / "fit.yaml")

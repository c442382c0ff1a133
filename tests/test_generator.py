"""The synthetic generators: ``gen=1`` reproduces the streams behind every number in the docs,
bit for bit (digests stored from the code before generator v2 existed)."""

import hashlib

import numpy as np
import pytest

import timesim
from timesim.kernels.synth import normal
from timesim.simulate import Simulation
from timesim.trace import open_trace

from .reference import GOLDEN, M64, mix64


def run_digest(spec: str, sets: list[str], threads: int = 1, fused: bool = True) -> str:
    """sha256 (16 hex digits) of every layer's write counts, row counters, row maps, stats
    and accumulator after simulating ``spec`` on the default chip with ``sets``."""
    hw = timesim.load_hwconfig(None, sets)
    trace = open_trace(spec)
    sim = Simulation(hw, trace.meta, threads=threads)
    sim.fused = fused
    for chunk in trace.chunks():
        sim.feed(chunk.arrays, chunk.t0, chunk.n)
    h = hashlib.sha256()
    for p in sim.policies:
        for a in (p.writes, p.counters, p.l2p, p.stats, p.A):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# computed on main at 5e35408, before generator v2 (issue 27); `gen=1` added to the specs when
# v2 became the default (the profile= workload is always v1 and takes no gen)
GEN1 = [
    ("synth:resnet20?iterations=300&seed=3&gen=1",
     ["controller.wear_leveling=ars", "controller.interval=50"], "2794ed79da472bab"),
    ("synth:resnet20?iterations=120&seed=1&gen=1",
     ["controller.selection=topk", "controller.topk_density=0.01"], "8474fa6810de9245"),
    ("synth:mlp?iterations=400&gen=1",
     ["controller.selection=sgs-element", "controller.wear_leveling=ars-random",
      "controller.interval=20", "write.pulses=delta"], "f9a6ed86b2727df7"),
    ("synth:resnet20?iterations=100&profile=digits",
     ["controller.wear_leveling=ars", "controller.interval=25"], "44696b4802079f68"),
    ("synth:hammer-chase?iterations=300&gen=1",
     ["controller.wear_leveling=ars", "controller.interval=10"], "b3bc49873e1ddcf4"),
]


@pytest.mark.parametrize("spec,sets,digest", GEN1)
def test_gen1_write_matrices_unchanged(spec, sets, digest):
    assert run_digest(spec, sets) == digest


def test_gen1_unfused_and_threaded_unchanged():
    spec, sets, digest = GEN1[0]
    assert run_digest(spec, sets, fused=False) == digest
    assert run_digest(spec, sets, threads=2) == digest


def test_gen1_values_unchanged():
    assert hashlib.sha256(normal(7, 3, 11, 1000).tobytes()).hexdigest()[:16] \
        == "52357e750f731cb5"
    chunk = open_trace("synth:resnet20?iterations=20&seed=2&gen=1").generate(5, 4, 3)
    assert hashlib.sha256(chunk.tobytes()).hexdigest()[:16] == "4b23de0759d79fb3"


# ---- generator v2 ---------------------------------------------------------------------------

Z2 = np.float32(np.sqrt(3.0 / (1.0 - 2.0 ** -16)) / 256.0)


def ref_z2(seed, layer, t, start, size):
    """v2 on Python ints: element e is byte sum s of one 32-bit half of hash e >> 1 (low half
    for even e), z = float32(s - 510) · Z2."""
    key = mix64((seed + GOLDEN) & M64)
    key = mix64(key ^ ((layer + GOLDEN) & M64))
    key = mix64(key ^ ((t * GOLDEN) & M64))
    out = np.empty(size, np.float32)
    for i, e in enumerate(range(start, start + size)):
        h = mix64((key + (e >> 1) * GOLDEN) & M64)
        x = h >> 32 if e & 1 else h & 0xFFFFFFFF
        s = sum((x >> (8 * k)) & 0xFF for k in range(4))
        out[i] = np.float32(s - 510) * Z2
    return out


def pmf_v2():
    """Exact distribution of v2's byte sum s (0 .. 1020): four uniform bytes convolved."""
    p = np.full(256, 1 / 256)
    return np.convolve(np.convolve(p, p), np.convolve(p, p))


@pytest.mark.parametrize("start,size", [(0, 1), (0, 37), (1, 1), (1, 2), (5, 64), (13, 18)])
def test_gen2_is_the_formula_on_python_ints(start, size):
    assert np.array_equal(normal(11, 2, 40, size, gen=2, start=start),
                          ref_z2(11, 2, 40, start, size))


def test_gen2_any_block_is_a_slice_of_the_whole_stream():
    whole = normal(3, 1, 9, 4099, gen=2)
    for start, size in ((0, 4099), (1, 2048), (2047, 3), (4000, 99), (77, 1)):
        assert np.array_equal(normal(3, 1, 9, size, gen=2, start=start),
                              whole[start:start + size])


def sample_v2(n_streams=16, size=1 << 16):
    """v2 values of n_streams streams (seed, layer, iteration varied) and their byte sums."""
    z = np.concatenate([normal(s % 3, s // 3, 1000 + s, size, gen=2)
                        for s in range(n_streams)]).astype(np.float64)
    return z, np.rint(z / np.float64(Z2)).astype(np.int64) + 510


def test_gen2_unit_variance_and_its_exact_moments():
    p = pmf_v2()
    x = (np.arange(1021) - 510) * np.float64(Z2)
    assert abs(p @ x) < 1e-12 and abs(p @ x**2 - 1) < 2e-7
    k4 = p @ x**4
    assert abs(k4 - 2.7) < 1e-3                       # Irwin-Hall n = 4: 3 - 6/5 · 1/4
    z, _ = sample_v2()
    n = z.size
    # tolerances: 6 standard errors of each sample moment (var(z^k) from the exact pmf)
    for k, want in ((1, 0.0), (2, 1.0), (3, 0.0), (4, k4)):
        se = np.sqrt((p @ x ** (2 * k) - (p @ x**k) ** 2) / n)
        assert abs(np.mean(z**k) - want) < 6 * se, (k, np.mean(z**k), want, se)


def chi2_limit(df, z=5.0):
    """Wilson-Hilferty: the chi-square quantile ~z standard deviations above its mean."""
    a = 2 / (9 * df)
    return df * (1 - a + z * np.sqrt(a)) ** 3


def equal_bins(p, k):
    """Edges cutting the pmf p into about k bins of equal probability (tails included)."""
    c = np.cumsum(p)
    edges = np.unique(np.searchsorted(c, np.arange(1, k) / k))
    return np.concatenate([[0], edges + 1, [p.size]])


def test_gen2_quantiles_chi_square_against_the_exact_distribution():
    p = pmf_v2()
    _, s = sample_v2()
    edges = equal_bins(p, 64)
    obs = np.add.reduceat(np.bincount(s, minlength=p.size), edges[:-1])
    exp = np.add.reduceat(p, edges[:-1]) * s.size
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert chi2 < chi2_limit(len(exp) - 1), chi2
    # the far tails, which selection reads: |z| > 3 (s within 67 of either end)
    tail = (p[:67].sum() + p[-67:].sum()) * s.size
    got = ((s < 67) | (s > 1020 - 67)).sum()
    assert abs(got - tail) < 6 * np.sqrt(tail)


def test_gen2_against_gen1_two_sample_chi_square():
    """v1 and v2 draw from the same Irwin-Hall law: binned alike (equal v2 probability)."""
    z2, _ = sample_v2(8)
    z1 = np.concatenate([normal(s % 3, s // 3, 1000 + s, 1 << 16) for s in range(8)])
    cuts = (np.arange(1021)[equal_bins(pmf_v2(), 40)[1:-1]] - 510 - 0.5) * np.float64(Z2)
    a = np.bincount(np.searchsorted(cuts, z1), minlength=cuts.size + 1)
    b = np.bincount(np.searchsorted(cuts, z2), minlength=cuts.size + 1)
    chi2 = ((a - b) ** 2 / (a + b)).sum()             # equal sample sizes
    assert chi2 < chi2_limit(cuts.size), chi2


def corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_gen2_lag_correlations_and_the_two_halves_of_a_hash():
    z = normal(5, 4, 321, 1 << 20, gen=2).astype(np.float64)
    lim = 6 / np.sqrt(z.size)
    for lag in (1, 2, 3, 4, 7, 8, 15, 16, 31, 64, 2048):
        assert abs(corr(z[:-lag], z[lag:])) < lim, lag
    lo, hi = z[0::2], z[1::2]                        # one hash's two values
    lim2 = 6 / np.sqrt(lo.size)
    for f in (lambda x: x, np.abs, np.square, lambda x: x**3):
        assert abs(corr(f(lo), f(hi))) < lim2


def test_gen2_streams_independent_across_seeds_layers_iterations():
    n = 1 << 18
    lim = 6 / np.sqrt(n)
    base = normal(1, 2, 3, n, gen=2).astype(np.float64)
    for other in ((2, 2, 3), (1, 3, 3), (1, 2, 4), (0, 0, 0)):
        z = normal(*other, n, gen=2).astype(np.float64)
        assert abs(corr(base, z)) < lim and abs(corr(base**2, z**2)) < lim, other
    # the same stream is not v1's (different values from the same hashes)
    assert abs(corr(base, normal(1, 2, 3, n).astype(np.float64))) < lim


def test_gen2_selection_is_uniform_over_equal_rows():
    """What SGS reads: with every row equally important (M = 0, unit factors) each row wins
    as often as any other. The residual accumulation makes the counts more even than a
    multinomial's, so the chi-square of uniform selection is an upper test."""
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row",
                                      "controller.wear_leveling=none"])
    from timesim.policies import LayerPolicy
    from timesim.trace.format import LayerInfo

    rows, cols, n = 64, 32, 20000
    pol = LayerPolicy(LayerInfo("x", "linear", rows, cols), hw)
    ones = np.ones
    piece = (0, n, np.zeros((rows, cols), np.float32), ones((n, rows), np.float32),
             ones((n, cols), np.float32), ones((n, rows), np.float32),
             ones((n, cols), np.float32), np.zeros((0, 0), np.float32))
    pol.process_source(9, 0, [piece], 0, n, gen=2)
    counts = pol.counters
    exp = n / rows
    assert counts.sum() == n
    assert ((counts - exp) ** 2 / exp).sum() < chi2_limit(rows - 1)


@pytest.mark.parametrize("spec,sets", [
    ("synth:resnet20?iterations=150&seed=3&gen=2",
     ["controller.wear_leveling=ars", "controller.interval=50"]),
    ("synth:mlp?iterations=300&gen=2",
     ["controller.selection=topk", "controller.topk_density=0.01", "write.pulses=delta"]),
    ("synth:hammer-chase?iterations=200&gen=2",
     ["controller.wear_leveling=ars", "controller.interval=10"]),
])
def test_gen2_fused_unfused_and_threads_agree(spec, sets):
    digest = run_digest(spec, sets)
    assert run_digest(spec, sets, fused=False) == digest
    assert run_digest(spec, sets, threads=2) == digest
    assert run_digest(spec.replace("&gen=2", "&gen=1"), sets) != digest    # another stream


def test_gen2_label_source_and_bad_values():
    t = open_trace("synth:resnet20?iterations=10&gen=2")
    assert t.gen == 2 and "gen=2" in t.label and "gen=2" in t.meta.source
    assert open_trace(t.label).gen == 2
    t1 = open_trace("synth:resnet20?iterations=10&gen=1")
    assert t1.gen == 1 and t1.label.endswith("&gen=1") and "gen" not in t1.meta.source
    assert open_trace(t1.label).gen == 1          # a label re-opened (shards) is its stream
    assert open_trace("synth:resnet20?iterations=10").gen == 2      # the default
    from timesim.errors import TraceError

    with pytest.raises(TraceError, match="gen: must be 1 or 2"):
        open_trace("synth:resnet20?gen=3")
    with pytest.raises(TraceError, match="gen"):
        open_trace("synth:resnet20?profile=digits&gen=2")


def test_rows_hashed_in_the_add_are_the_same_streams(monkeypatch):
    """Rows hashed in the loop that adds them (kernels/select.py STREAM, used when the
    network's accumulators come from memory) give the stored gen=1 digests and, under gen=2,
    the block-wise path's digests; on one and two threads, sgs-row (split too), sgs-element
    and top-k."""
    import importlib

    # the module: timesim.simulate is also the function
    S = importlib.import_module("timesim.simulate")
    gen2 = [("synth:resnet20?iterations=150&seed=3&gen=2",
             ["controller.wear_leveling=ars", "controller.interval=50"]),
            ("synth:mlp?iterations=300&gen=2",
             ["controller.selection=topk", "controller.topk_density=0.01"]),
            ("synth:mlp?iterations=200&gen=2",
             ["controller.selection=sgs-element", "controller.wear_leveling=ars"])]
    blockwise = [run_digest(spec, sets) for spec, sets in gen2]
    monkeypatch.setattr(S, "STREAM_BYTES", 0)
    monkeypatch.setattr(S, "STREAM_COLS", 1)
    sim = Simulation(timesim.load_hwconfig(), open_trace("synth:mlp?iterations=1").meta)
    assert all(p.stream_rows for p in sim.policies)
    for spec, sets, digest in GEN1[:4]:       # profile=digits: drifting factors (no UNIT)
        assert run_digest(spec, sets) == digest
    assert run_digest(*GEN1[0][:2], threads=2) == GEN1[0][2]
    for (spec, sets), digest in zip(gen2, blockwise):
        assert run_digest(spec, sets) == digest
        assert run_digest(spec, sets, threads=2) == digest     # mlp's fc2: the row split


# fingerprints computed at 6b08991, before v2 became the default: a gen=1 run keeps its
# fingerprint (its checkpoints and finished runs are recognised with gen=1 in the spec)
OLD_FINGERPRINTS = [
    ("synth:resnet20?iterations=300&gen=1",
     "2e377ac5e6ac2b21da9441220053bed19fe687000b8f83c14a21b7e5b3a6df96"),
    ("synth:mlp-small?iterations=50&seed=3&gen=1",
     "d15bbec45404c3681758d71fdac8a764ba7f21072a448028aaf56149b1895f49"),
    ("synth:resnet20?iterations=300&gen=2",
     "c4059cf49669062243bad4c6df943e755b0eb151321f573e2d86a2d4ca89c394"),
    ("synth:resnet20?iterations=300",          # now generator 2: gen=2's fingerprint
     "c4059cf49669062243bad4c6df943e755b0eb151321f573e2d86a2d4ca89c394"),
]


@pytest.mark.parametrize("spec,fp", OLD_FINGERPRINTS)
def test_fingerprints_across_the_default_switch(spec, fp):
    from timesim.report import trace_fingerprint

    assert trace_fingerprint(open_trace(spec)) == fp


def test_default_generator_is_2_and_an_old_gen1_checkpoint_resumes_with_gen1(tmp_path):
    """A spec without gen runs generator 2 (the same writes as gen=2, not gen=1's); a run
    checkpointed under gen=1 resumes with gen=1 in its spec, and without it is refused with
    a line saying why."""
    from timesim import checkpoint
    from timesim.errors import SimulationError
    from timesim.report import trace_fingerprint
    from timesim.simulate import run_fingerprint

    sets = ["controller.wear_leveling=ars", "controller.interval=50"]
    spec = "synth:resnet20?iterations=300&seed=3&chunk=64"
    assert run_digest(spec, sets) == run_digest(spec + "&gen=2", sets)
    assert run_digest(spec, sets) != run_digest(spec + "&gen=1", sets)
    hw = timesim.load_hwconfig(None, sets)
    whole = timesim.simulate(hw, spec + "&gen=1")
    out = tmp_path / "run"
    # a checkpointed gen=1 run, interrupted after its checkpoint at iteration 128
    trace = open_trace(spec + "&gen=1")
    sim = Simulation(hw, trace.meta)
    for chunk in trace.chunks():
        sim.feed(chunk.arrays, chunk.t0, chunk.n)
        if sim.iterations == 128:
            break
    out.mkdir()
    checkpoint.save(out, sim, trace, run_fingerprint(hw, trace_fingerprint(trace)),
                    {"trace_pos": 128})
    with pytest.raises(SimulationError, match="gen=1 in its spec"):
        timesim.simulate(hw, spec, out=out, resume=True, checkpoint_every=64)
    resumed = timesim.simulate(hw, spec + "&gen=1", out=out, resume=True, checkpoint_every=64)
    assert resumed["writes"] == whole["writes"] and resumed["lifetime"] == whole["lifetime"]


# ---- float16 replay decoded inside the policy kernels ------------------------------------------

def test_half_decode_in_the_kernels_is_exact_for_all_65536_patterns():
    from numba import njit

    from timesim.kernels import select
    from timesim.kernels.convert import _f16_to_f32_bits, _f16_to_f32_fast

    from .reference import float16_bits_to_value

    @njit
    def decode(src, dst):
        for i in range(src.shape[0]):
            dst[i] = select._half_value(src[i])

    src = np.arange(65536, dtype=np.uint16)
    got = np.empty(65536, np.float32)
    decode(src, got)
    want = np.empty(65536, np.uint32)
    _f16_to_f32_bits(src, want)                   # the branchy reference decoder
    assert np.array_equal(got.view(np.uint32), want)
    fast = np.empty(65536, np.uint32)
    _f16_to_f32_fast(src, fast)
    assert np.array_equal(fast, want)
    ref = np.array([float16_bits_to_value(int(h)) for h in src])
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].astype(np.float64), ref[~nan])


@pytest.mark.parametrize("selection", ["sgs-row", "sgs-element", "topk", "dense"])
def test_float16_chunks_decoded_in_the_kernel_equal_the_converted_ones(selection):
    from timesim.kernels.convert import to_float32
    from timesim.policies import LayerPolicy
    from timesim.trace.format import LayerInfo

    rng = np.random.default_rng(1)
    # normal, subnormal (1e-6) and large values; ties from the coarse float16 grid
    g = (rng.standard_normal((40, 37, 21)) * rng.choice([1e-6, 1.0, 300.0], (40, 37, 21)))
    g = g.astype(np.float16)
    hw = timesim.load_hwconfig(None, [f"controller.selection={selection}",
                                      "controller.wear_leveling=ars", "controller.interval=8",
                                      "controller.topk_density=0.02", "write.pulses=delta"])
    layer = LayerInfo("x", "linear", 37, 21)
    a, b = LayerPolicy(layer, hw), LayerPolicy(layer, hw)
    for t0, lo, hi in ((0, 0, 13), (13, 13, 40)):
        a.process(to_float32(g[lo:hi], "float16"), t0)
        b.process_half(g[lo:hi].view(np.uint16), t0)
    for k, v in a.state().items():
        assert np.array_equal(v, b.state()[k]), k
    bad = g[:3].copy()
    bad[2, 5, 7] = np.inf
    with pytest.raises(timesim.errors.TraceError, match="iteration 42"):
        b.process_half(bad.view(np.uint16), 40)


# ---- timesim bench: the issue-27 targets ------------------------------------------------------

def test_bench_targets_projection_and_ratios(monkeypatch):
    """A stub clock: a run of n iterations takes start + n · rate seconds (per case); the
    projection to 64000 iterations must recover start + 64000 · rate, and the ratio divide it
    by the numpy loop's 64000 iterations."""
    import timesim.bench_targets as bt

    rates = {(1, 2): 4e-4, (2, 2): 2e-4, (2, 1): 3e-4}

    def fake_run(spec, threads):
        n = int(spec.split("iterations=")[1].split("&")[0])
        gen = 2 if "gen=2" in spec else 1
        return 0.5 + n * rates[(gen, threads)]

    monkeypatch.setattr(bt, "_run_seconds", fake_run)
    monkeypatch.setattr(bt, "simulate", lambda *a, **k: None)
    monkeypatch.setattr(bt, "numpy_loop_per_iteration", lambda model, reps: 1e-3)
    monkeypatch.setattr(bt.os, "cpu_count", lambda: 2)
    e = bt.end_to_end(400, 1)
    for k, rate in (("gen1", 4e-4), ("gen2", 2e-4), ("gen2_1thread", 3e-4)):
        assert e["projected_64000_s"][k] == pytest.approx(0.5 + 64000 * rate)
        assert e["ratio_to_numpy_loop"][k] == pytest.approx((0.5 + 64000 * rate) / 64.0)
    assert e["threads_speedup"] == pytest.approx((0.5 + 64000 * 3e-4) / (0.5 + 64000 * 2e-4))


def test_bench_targets_numpy_loop_is_the_sum_over_layers(monkeypatch):
    import timesim.bench_targets as bt

    seen = []

    def fake(A, block, writes, l2p):
        seen.append(A.shape)

    monkeypatch.setattr(bt, "numpy_sgs_row", fake)
    bt.numpy_loop_per_iteration("resnet20", 2)
    shapes = [(layer.rows, layer.cols) for layer in open_trace("synth:resnet20").meta.layers]
    assert seen == [s for s in shapes for _ in range(2)]


def test_bench_targets_replay_and_threads_measure_what_they_say():
    import timesim.bench_targets as bt

    r = bt.replay_stream(192, 1)                       # 3 chunks of 64; the first untimed
    layers = open_trace("synth:resnet20").meta.layers
    data = 2 * 64 * 2 * sum(layer.cells for layer in layers)     # chunks 1 and 2, float16
    assert data < r["bytes"] <= data + 2 * len(layers) * 256      # + the .npy headers
    for k, v in r["gb_per_s"].items():
        assert v == pytest.approx(r["bytes"] / r["seconds"][k] / 1e9)
    x = bt.policy_threads("mlp", 64, 1)
    assert x["speedup"] == pytest.approx(x["seconds"]["1"] / x["seconds"][str(x["cores"])])
    assert x["control_speedup"] > 0


# ---- one layer on every core: sgs-row split over numba's threads -------------------------------

@pytest.mark.parametrize("style", ["normal", "ties", "hot-row"])
def test_split_sgs_row_equals_the_serial_kernel(style):
    from timesim.policies import LayerPolicy
    from timesim.trace.format import LayerInfo

    from .conftest import random_grads

    rng = np.random.default_rng(7)
    g = random_grads(rng, 60, 300, 24, style)
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row",
                                      "controller.wear_leveling=ars", "controller.interval=8",
                                      "write.pulses=delta"])
    layer = LayerInfo("x", "linear", 300, 24)
    ref = LayerPolicy(layer, hw)
    ref.process(g, 0)
    for parts in (2, 3, 5, 64):          # 64 > the layer's row blocks: capped
        b = LayerPolicy(layer, hw)
        b.split = parts
        b.process(g[:17], 0)
        b.process(g[17:], 17)
        for k, v in ref.state().items():
            assert np.array_equal(v, b.state()[k]), (parts, k)
    bad = g[:5].copy()
    bad[3, 250, 1] = np.nan
    with pytest.raises(timesim.errors.TraceError, match="iteration 63"):
        b.process(bad, 60)


def test_a_layer_too_big_to_balance_runs_split_with_the_same_results():
    spec = "synth:mlp?iterations=300&gen=2"
    sets = ["controller.wear_leveling=ars", "controller.interval=20", "write.pulses=delta"]
    digests = {run_digest(spec, sets, threads=th) for th in (1, 2, 3)}
    digests.add(run_digest(spec, sets, threads=2, fused=False))
    assert len(digests) == 1
    hw = timesim.load_hwconfig(None, sets)
    trace = open_trace(spec)
    sim = Simulation(hw, trace.meta, threads=2)
    # fc2 (256 x 256) holds 78% of the MLP's cells: it runs alone on both threads
    big = [layer.name for layer in trace.meta.layers if layer.cells == 65536]
    assert [p.layer.name for p in sim._split_layers()] == big == ["fc2"]
    assert Simulation(hw, open_trace("synth:resnet20").meta, threads=2)._split_layers() == []


def test_bench_split_layer_times_the_layer_it_names():
    import timesim.bench_targets as bt

    x = bt.split_layer("mlp", 1, 50, 1)
    assert x["layer"] == "fc2" and x["shape"] == [256, 256]
    assert x["speedup"] == pytest.approx(x["seconds"]["1"] / x["seconds"][str(x["cores"])])

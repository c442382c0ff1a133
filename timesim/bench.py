"""``timesim bench``: kernel throughput as ratios against baselines measured in the same run.

Baselines: a plain numpy implementation of the same policy step, and a plain memory copy
(``np.copyto``) moving the same number of bytes the kernel must touch (read G, read and write
A: 12 bytes per float32 element). JIT warm-up (compile or cache load) is reported apart.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .bench_targets import chunk_rates, float16_trace, numpy_sgs_row, run_targets
from .config import load_hwconfig
from .kernels.synth import _normal_row, _normal_row2, _stream_key
from .policies import LayerPolicy
from .simulate import simulate
from .trace.format import LayerInfo
from .trace.synth import SynthTrace

SHAPES = [(144, 16), (288, 32), (576, 64), (2304, 256)]   # ResNet-20 layers + the case


def _best(fn, reps: int) -> float:
    """Best of ``reps`` timings (least disturbed by the other core's load)."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _copy_seconds(nbytes_touched: int, reps: int) -> float:
    """Time to copy nbytes_touched/2 bytes (read + write = nbytes_touched)."""
    n = max(1, nbytes_touched // 8)
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    return _best(lambda: np.copyto(dst, src), reps)


def bench_policy(selection: str, rows: int, cols: int, iters: int, reps: int) -> dict:
    """Steady-state time of one policy step; G is one cache-resident matrix reused, so kernel,
    numpy and copy all run on data in the same cache level (compute, not DRAM, is measured)."""
    rng = np.random.default_rng(0)
    # a chunk of distinct iterations up to ~1 MB (stays in L2), called iters/m times
    m = max(1, min(iters, (1 << 20) // (4 * rows * cols)))
    block = rng.standard_normal((m, rows, cols)).astype(np.float32)
    chunk = np.broadcast_to(block, (iters // m, m, rows, cols)).reshape(-1, rows, cols)
    hw = load_hwconfig(None, [f"controller.selection={selection}",
                              "controller.wear_leveling=none"])
    layer = LayerInfo(name="bench", kind="linear", rows=rows, cols=cols)
    pol = LayerPolicy(layer, hw)
    t = time.perf_counter()
    pol.process(block[:1], 0)                       # JIT compile or cache load
    warmup = time.perf_counter() - t

    def kernel():
        for _ in range(iters // m):
            pol.process(block, pol.iterations)

    t_kernel = _best(kernel, reps) / (iters // m * m)
    elems = rows * cols
    out = {"policy": selection, "shape": [rows, cols], "warmup_s": warmup,
           "kernel_ns_per_element": t_kernel / elems * 1e9}
    if selection == "sgs-row":
        A = np.zeros((rows, cols), np.float32)
        writes = np.zeros((rows, cols), np.int64)
        l2p = np.arange(rows)
        t_np = _best(lambda: numpy_sgs_row(A, chunk, writes, l2p), max(1, reps // 2)) / len(chunk)
        t_copy = _copy_seconds(12 * elems, reps * 4)
        out.update({"numpy_ns_per_element": t_np / elems * 1e9,
                    "speedup_vs_numpy": t_np / t_kernel,
                    "kernel_gb_per_s": 12 * elems / t_kernel / 1e9,
                    "copy_gb_per_s": 12 * elems / t_copy / 1e9,
                    "fraction_of_copy_bandwidth": t_copy / t_kernel})
    return out


def bench_synth(n: int, reps: int) -> dict:
    out = np.empty(n, dtype=np.float32)
    key = np.uint64(_stream_key(0, 0, 0))
    t = time.perf_counter()
    _normal_row(key, 0, out[:8])
    warmup = time.perf_counter() - t
    t_hash = _best(lambda: _normal_row(key, 0, out), reps) / n
    _normal_row2(key, 0, out[:8])
    t_hash2 = _best(lambda: _normal_row2(key, 0, out), reps) / n
    rng = np.random.default_rng(0)
    t_np = _best(lambda: rng.standard_normal(n, dtype=np.float32), reps) / n
    return {"warmup_s": warmup, "hash_normal_ns": t_hash * 1e9, "numpy_normal_ns": t_np * 1e9,
            "speedup_vs_numpy": t_np / t_hash, "gen2_normal_ns": t_hash2 * 1e9,
            "gen2_speedup": t_hash / t_hash2}


def bench_end_to_end(iterations: int) -> dict:
    """Synthetic ResNet-20 with sgs + ars (the default chip), whole runs in the same process:
    generating each chunk first (unfused) against generating inside the policy kernels
    (fused), on one thread and on all cores."""
    hw = load_hwconfig()
    cores = os.cpu_count() or 1
    simulate(hw, SynthTrace("resnet20", iterations=64), threads=1)      # JIT warm-up
    timed = {}
    for label, fused, th in (("unfused_1", False, 1), ("fused_1", True, 1),
                             (f"fused_{cores}", True, cores)):
        t = time.perf_counter()
        simulate(hw, SynthTrace("resnet20", iterations=iterations), threads=th, fused=fused)
        timed[label] = time.perf_counter() - t
    best = timed[f"fused_{cores}"]
    policy_s = timed["fused_1"]
    out = {"model": "resnet20", "iterations": iterations, "seconds": timed,
           "fused_speedup": timed["unfused_1"] / timed["fused_1"],
           "iterations_per_s": iterations / best, "projected_64000_s": best * 64000 / iterations,
           "policy_seconds": policy_s}
    out["threads"] = {"cores": cores, "seconds": {"1": timed["fused_1"],
                                                  str(cores): best},
                      "speedup": timed["fused_1"] / best}
    # the engine simulates the iteration without swaps once and each distinct ARS signature it
    # cannot derive from it (Engine._shifted): at 64000 iterations with SI 1024 there are 63
    # signatures; its time projected as the per-chunk work (linear in the iterations) plus
    # the simpy simulations, at this run's share of ARS signatures simulated
    full = 64000 // hw.controller.interval + 1
    for pipeline in ("none", "layer"):
        t = time.perf_counter()
        report = simulate(hw.replace(engine={"pipeline": pipeline}),
                          SynthTrace("resnet20", iterations=iterations))
        full_s = time.perf_counter() - t
        run = report["run"]
        sims, derived = run["engine_simulated_iterations"], run["engine_derived_iterations"]
        per_sig = run["engine_simpy_wall_s"] / max(1, sims)
        share = (sims - 1) / max(1, sims - 1 + derived)
        projected = ((run["engine_wall_s"] - run["engine_simpy_wall_s"]) * 64000 / iterations
                     + per_sig * (1 + share * (full - 1)))
        out[pipeline] = {
            "with_engine_seconds": full_s, "engine_seconds": run["engine_wall_s"],
            "engine_overhead": run["engine_wall_s"] / policy_s,
            "engine_seconds_per_signature": per_sig,
            "simulated": sims, "derived": derived, "simpy_seconds": run["engine_simpy_wall_s"],
            "projected_64000_engine_overhead": projected / (policy_s * 64000 / iterations),
            "distinct_signatures": report["cycles"]["distinct_signatures"],
            "events": run["engine_events"], "events_per_s": run["engine_events_per_s"]}
    return out


def _pass_seconds(arrays: list[np.ndarray], threads: int, reps: int) -> float:
    """One read + write pass over ``arrays`` (x += 1 in place, the accumulators' minimum
    traffic per iteration), split over ``threads`` threads as the layers are."""
    from concurrent.futures import ThreadPoolExecutor

    groups: list[list[np.ndarray]] = [[] for _ in range(threads)]
    load = [0] * threads
    for a in sorted(arrays, key=lambda a: -a.size):
        i = load.index(min(load))
        groups[i].append(a)
        load[i] += a.size

    def work(g):
        for a in g:
            np.add(a, np.float32(1.0), out=a)

    with ThreadPoolExecutor(threads) as pool:
        return _best(lambda: list(pool.map(work, groups)), reps)


def bench_floor(model: str, iterations: int, reps: int, gen: int = 1) -> dict:
    """Seconds per iteration of the fused policy path (sgs + ars, all cores) on a synthetic
    network against the memory floor measured in the same run: a read + write pass over the
    float32 accumulators of every weight (8 bytes each), on the same cores."""
    from .simulate import Simulation

    hw = load_hwconfig()
    cores = os.cpu_count() or 1
    trace = SynthTrace(model, iterations=iterations, chunk=8, gen=gen)
    cells = sum(layer.cells for layer in trace.meta.layers)
    arrays = [np.zeros((layer.rows, layer.cols), np.float32) for layer in trace.meta.layers]
    # the floor best of as many passes as the kernel's timed chunks (at least ``reps``): the
    # two sides of the ratio taken as best-of the same number of tries
    t_floor = _pass_seconds(arrays, cores, max(reps, trace.meta.n_chunks - 1))
    del arrays
    out = {"model": model, "gen": gen, "weights": cells, "floor_ms": t_floor * 1e3,
           "floor_gb_per_s": 8 * cells / t_floor / 1e9}
    for fused in (True, False):
        sim = Simulation(hw, trace.meta, threads=cores)
        sim.fused = fused
        mean, per = chunk_rates(sim, trace)        # the fastest chunk: the floor is best-of
        key = "fused" if fused else "unfused"
        out[f"{key}_ms"] = per * 1e3
        out[f"{key}_mean_ms"] = mean * 1e3
        out[f"{key}_ratio_to_floor"] = per / t_floor
    return out


def bench_replay(iterations: int, reps: int) -> dict:
    """A trace directory replayed (sgs + ars, all cores, the reader thread prefetching)
    against reading the same files sequentially, in the same run, page cache warm for both."""
    import tempfile
    from pathlib import Path

    from .trace import TraceDir

    hw = load_hwconfig()
    with tempfile.TemporaryDirectory(prefix="timesim-bench-") as tmp:
        path = float16_trace(Path(tmp) / "t", iterations)
        files = sorted(p for p in path.rglob("*.npy"))
        nbytes = sum(p.stat().st_size for p in files)

        def raw():
            for p in files:
                with open(p, "rb") as fh:
                    while fh.read(1 << 22):
                        pass

        t_raw = _best(raw, reps)
        simulate(hw, TraceDir(path))                       # warm-up (JIT, cache)
        t_replay = _best(lambda: simulate(hw, TraceDir(path)), max(1, reps // 2))
        t_plain = _best(lambda: simulate(hw, _NoPrefetch(TraceDir(path))), max(1, reps // 2))
    return {"iterations": iterations, "bytes": nbytes, "raw_read_gb_per_s": nbytes / t_raw / 1e9,
            "replay_gb_per_s": nbytes / t_replay / 1e9, "replay_s": t_replay,
            "raw_read_s": t_raw, "ratio_to_raw_read": t_replay / t_raw,
            "prefetch_speedup": t_plain / t_replay}


def bench_fit(iterations: int, reps: int, threads: int | None = None) -> dict:
    """``synth:fit`` against ``synth:resnet20`` on the same layers (sgs + ars; ``threads``,
    default all cores): a fitted model with ResNet-20's shapes and every part a fit writes:
    drifting importances, each cell's own scale, a drifting direction with its strength by
    RMS bin, gates and the batch's loudness."""
    import tempfile
    from pathlib import Path

    from .bench_loop import fitted_model

    hw = load_hwconfig()
    with tempfile.TemporaryDirectory(prefix="timesim-bench-") as tmp:
        model = fitted_model(Path(tmp) / "fit.yaml")
        fit = f"synth:fit?model={model}&iterations={iterations}"
        plain = f"synth:resnet20?iterations={iterations}&gen=1"   # synth:fit is generator 1
        simulate(hw, fit.replace(f"={iterations}", "=64"), threads=threads)   # warm-up
        t_fit = t_plain = float("inf")
        for _ in range(reps):                                           # alternating
            t = time.perf_counter()
            simulate(hw, plain, threads=threads)
            t_plain = min(t_plain, time.perf_counter() - t)
            t = time.perf_counter()
            simulate(hw, fit, threads=threads)
            t_fit = min(t_fit, time.perf_counter() - t)
    return {"iterations": iterations, "threads": threads or os.cpu_count() or 1,
            "fit_s": t_fit, "synth_s": t_plain, "ratio": t_fit / t_plain}


class _NoPrefetch:
    """A trace directory read without the reader thread (for the benchmark's comparison)."""

    def __init__(self, trace):
        self.meta, self.path, self._t = trace.meta, trace.path, trace

    def chunks(self, start_chunk: int = 0, verify: bool = True):
        return self._t.chunks(start_chunk, verify, prefetch=False)


def run_bench(quick: bool = False, progress: bool = True, targets: bool = True) -> dict:
    reps = 3 if quick else 7
    iters = 8 if quick else 32
    say = print if progress else (lambda *a, **k: None)
    result: dict = {"policy_kernels": [], "note": "ratios are against baselines measured in "
                    "this same run on this machine"}
    say(f"{'policy':<12}{'shape':>12}{'kernel ns/el':>14}{'numpy ns/el':>13}{'x numpy':>9}"
        f"{'GB/s':>8}{'copy GB/s':>11}{'of copy':>9}{'warm-up s':>11}")
    for selection, shapes in (("sgs-row", SHAPES), ("sgs-element", SHAPES[:3]),
                              ("topk", SHAPES[:3])):
        for rows, cols in shapes:
            r = bench_policy(selection, rows, cols, iters, reps)
            result["policy_kernels"].append(r)
            if "speedup_vs_numpy" in r:
                say(f"{selection:<12}{f'{rows}x{cols}':>12}{r['kernel_ns_per_element']:>14.3f}"
                    f"{r['numpy_ns_per_element']:>13.3f}{r['speedup_vs_numpy']:>9.1f}"
                    f"{r['kernel_gb_per_s']:>8.1f}{r['copy_gb_per_s']:>11.1f}"
                    f"{r['fraction_of_copy_bandwidth']:>9.2f}{r['warmup_s']:>11.3f}")
            else:
                say(f"{selection:<12}{f'{rows}x{cols}':>12}{r['kernel_ns_per_element']:>14.3f}"
                    f"{'':>13}{'':>9}{'':>8}{'':>11}{'':>9}{r['warmup_s']:>11.3f}")
    s = bench_synth(1 << 16 if quick else 1 << 20, reps)
    result["synth_normal"] = s
    say(f"synthetic normal: {s['hash_normal_ns']:.3f} ns/value (numpy "
        f"{s['numpy_normal_ns']:.3f} ns, {s['speedup_vs_numpy']:.1f}x); gen=2 "
        f"{s['gen2_normal_ns']:.3f} ns/value ({s['gen2_speedup']:.2f}x gen=1)")
    a = bench_analog(3 if quick else 10)
    result["analog_mvm"] = a
    say(f"analog MVM 512x512, batch 128 (BLAS float32 matmul {a['blas_ms']:.3f} ms):")
    for c in a["cases"]:
        say(f"  {c['case']}: {c['ms']:.3f} ms = {c['ratio_to_blas']:.2f}x BLAS "
            f"({c['ratio_per_input_slice']:.2f}x per input slice, {c['ratio_to_floor']:.2f}x "
            f"its floor of {c['input_slices']} x {c['weight_slices']} matmuls)")
    e = bench_end_to_end(256 if quick else 2048)
    result["end_to_end"] = e
    sec = e["seconds"]
    th = e["threads"]
    say(f"end to end: resnet20 sgs+ars {e['iterations']} iterations: unfused 1 thread "
        f"{sec['unfused_1']:.2f} s, fused 1 thread {sec['fused_1']:.2f} s "
        f"({e['fused_speedup']:.2f}x), fused {th['cores']} threads "
        f"{th['seconds'][str(th['cores'])]:.2f} s ({th['speedup']:.2f}x one thread); "
        f"64000 iterations ~ {e['projected_64000_s']:.1f} s")
    f = bench_floor("resnet50", 17 if quick else 41, reps)
    result["floor"] = f
    say(f"floor: resnet50 sgs+ars (gen=1) per iteration, fastest chunk, fused "
        f"{f['fused_ms']:.2f} ms, unfused {f['unfused_ms']:.2f} ms; read+write pass over the "
        f"{f['weights'] / 1e6:.1f} M accumulators, best of {reps}, {f['floor_ms']:.2f} ms "
        f"({f['floor_gb_per_s']:.1f} GB/s): fused {f['fused_ratio_to_floor']:.2f}x the floor; "
        f"450450 iterations at the mean {f['fused_mean_ms']:.2f} ms ~ "
        f"{f['fused_mean_ms'] * 450450 / 60000:.0f} min "
        f"(floor {f['floor_ms'] * 450450 / 60000:.0f})")
    ft = bench_fit(512 if quick else 4096, reps)
    f1 = bench_fit(512 if quick else 4096, min(reps, 3), threads=1)
    result["fit"], result["fit_one_thread"] = ft, f1
    say(f"synth:fit vs synth:resnet20 (same layers, sgs+ars, {ft['iterations']} iterations): "
        f"{ft['threads']} threads {ft['fit_s']:.2f} s vs {ft['synth_s']:.2f} s = "
        f"{ft['ratio']:.2f}x; one thread {f1['fit_s']:.2f} s vs {f1['synth_s']:.2f} s = "
        f"{f1['ratio']:.2f}x")
    from .bench_loop import bench_loop

    lp = bench_loop(512 if quick else 4096, min(reps, 3), threads=1)
    result["fit_loop"] = lp
    say(f"synth:fit closed loop vs open loop (same model, one thread, {lp['iterations']} "
        f"iterations): sgs+ars {lp['sgs']['loop_s']:.2f} s vs {lp['sgs']['open_s']:.2f} s = "
        f"{lp['sgs']['ratio']:.2f}x; topk {lp['topk']['loop_s']:.2f} s vs "
        f"{lp['topk']['open_s']:.2f} s = {lp['topk']['ratio']:.2f}x (target <= 1.5x)")
    r = bench_replay(128 if quick else 512, reps)
    result["replay"] = r
    say(f"replay: resnet20 float16 trace, {r['bytes'] / 1e6:.0f} MB: {r['replay_gb_per_s']:.2f} "
        f"GB/s replayed vs {r['raw_read_gb_per_s']:.2f} GB/s raw sequential read "
        f"({r['ratio_to_raw_read']:.1f}x its time; reader thread {r['prefetch_speedup']:.2f}x "
        f"over none)")
    if targets:
        result["targets"] = run_targets(quick, say, bench_floor)
    for pipeline in ("none", "layer"):
        x = e[pipeline]
        say(f"engine (pipeline {pipeline}): +{x['engine_overhead']:.1%} over the policy path "
            f"alone ({x['engine_seconds']:.3f} s, {x['distinct_signatures']} distinct "
            f"signatures: {x['simulated']} simulated, {x['derived']} derived; {x['events']} "
            f"simpy events); at 64000 iterations "
            f"+{x['projected_64000_engine_overhead']:.1%}; whole run "
            f"{x['with_engine_seconds']:.2f} s")
    return result


def bench_analog(reps: int, rounds: int = 3) -> dict:
    """512x512 weights, batch 128, 8-bit DAC in one slice, 8-bit ADC, read noise on, against a
    float32 BLAS matmul of the same shapes (same run); then default 5-bit cells (2 weight
    slices) and bit-serial 1-bit DAC slices. Weights are programmed once (``program``); the MVM
    is what is timed, as on a chip that reads its arrays many times per write.

    Both sides are timed in alternating rounds, best of ``reps`` calls per round, with a pause
    before each block: BLAS's threads keep spinning ~0.1 s after a call, numba's ~10 ms, and a
    spinning pool from the other side would take a core from the one being timed. Each side is
    measured as it runs on its own, back to back, which is how a program calls it."""
    from .analog import program

    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 512)).astype(np.float32)
    w = rng.standard_normal((512, 512)).astype(np.float32)
    out = np.empty((128, 512), np.float32)
    cases = []
    for label, sets in (
            ("8-bit DAC, 1 slice, 8-bit weights in one 8-bit cell, 8-bit ADC, read noise",
             ["dac.bits=8", "dac.input_bits=8", "adc.bits=8", "adc.read_noise=0.01",
              "xbar.cell_bits=8"]),
            ("8-bit DAC, 1 slice, default 5-bit cells (2 slices), 8-bit ADC, read noise",
             ["dac.bits=8", "dac.input_bits=8", "adc.bits=8", "adc.read_noise=0.01"]),
            ("1-bit DAC, 8 slices, 8-bit cell, 8-bit ADC, read noise",
             ["dac.bits=1", "dac.input_bits=8", "adc.bits=8", "adc.read_noise=0.01",
              "xbar.cell_bits=8"]),
            ("the default chip (1-bit DAC, 8 slices; 5-bit cells, 2 slices; 6-bit calibrated "
             "ADCs)", [])):
        hw = load_hwconfig(None, sets)
        p = program(w, hw)
        t = time.perf_counter()
        p.mvm(x)                                        # JIT warm-up (or cache load)
        cases.append((label, hw, p, time.perf_counter() - t))
    t_blas = float("inf")
    t_case = [float("inf")] * len(cases)
    for _ in range(rounds):
        time.sleep(0.05)
        t_blas = min(t_blas, _best(lambda: np.matmul(x, w, out=out), reps * 4))
        for i, (_, _, p, _) in enumerate(cases):
            time.sleep(0.25)
            t_case[i] = min(t_case[i], _best(lambda p=p: p.mvm(x), reps))
    res = {"shape": [512, 512], "batch": 128, "blas_ms": t_blas * 1e3, "rounds": rounds,
           "cases": []}
    for (label, hw, p, warm), t in zip(cases, t_case):
        n_in = -(-hw.dac.input_bits // hw.dac.bits)
        # the floor: one float32 matmul per (input slice, weight slice) of the same shapes
        res["cases"].append({"case": label, "ms": t * 1e3, "ratio_to_blas": t / t_blas,
                             "input_slices": n_in, "weight_slices": p.slices,
                             "ratio_per_input_slice": t / t_blas / n_in,
                             "ratio_to_floor": t / (t_blas * n_in * p.slices),
                             "warmup_s": warm})
    return res

"""The speed targets of issue 27, each as a ratio to its floor measured in the same run
(``timesim bench``; docs/performance.md keeps the table): synthetic ResNet-20 end to end
against the numpy policy loop, two threads against one (ResNet-20, VGG-16), ResNet-50 per
iteration against the read + write pass over its accumulators, float16 replay against reading
the files. Timings alternate between the two sides of a ratio, best of ``reps`` each."""

from __future__ import annotations

import os
import time

import numpy as np
from numba import njit

from .config import load_hwconfig
from .simulate import Simulation, simulate
from .trace.synth import SynthTrace


def numpy_sgs_row(A, block, writes, l2p):
    """The numpy baseline of an sgs-row step, per gradient G of ``block``: A += G, the row of
    largest |A| zeroed and its writes counted (``bench.bench_policy`` and the targets)."""
    for G in block:
        A += G
        r = int(np.argmax(np.abs(A).max(axis=1)))
        A[r] = 0
        writes[l2p[r]] += 1


def numpy_loop_per_iteration(model: str, reps: int) -> float:
    """Seconds per iteration of the numpy policy loop over every layer of ``model``: the
    sgs-row step in numpy (A += G, the row of largest |A| zeroed and counted) on gradients
    already in memory (a cache-resident block of 16 iterations per layer): policy only, no
    generation, no ARS, no engine."""
    rng = np.random.default_rng(0)
    total = 0.0
    for layer in SynthTrace(model, iterations=1).meta.layers:
        block = rng.standard_normal((16, layer.rows, layer.cols)).astype(np.float32)
        A = np.zeros((layer.rows, layer.cols), np.float32)
        writes = np.zeros((layer.rows, layer.cols), np.int64)
        l2p = np.arange(layer.rows)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            numpy_sgs_row(A, block, writes, l2p)
            best = min(best, time.perf_counter() - t)
        total += best / len(block)
    return total


def _run_seconds(spec: str, threads: int) -> float:
    t = time.perf_counter()
    simulate(load_hwconfig(), spec, threads=threads)
    return time.perf_counter() - t


def _alternating(fns: dict, reps: int) -> dict:
    """Best of ``reps`` seconds per labelled callable, the callables taking turns."""
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            best[k] = min(best[k], fn())
    return best


def end_to_end(iterations: int, reps: int) -> dict:
    """Synthetic ResNet-20, sgs + ars on the default chip, whole runs (engine included) under
    both generators on every core and v2 on one, against the numpy policy loop. Projected to
    64000 iterations from runs of ``iterations`` and a quarter of it: the start-up (config,
    engine, report) once, the per-iteration rate from the difference."""
    cores = os.cpu_count() or 1
    short = max(1, iterations // 4)
    for gen in (1, 2):
        simulate(load_hwconfig(), f"synth:resnet20?iterations=64&gen={gen}")    # warm-up
    cases = {"gen1": (1, cores), "gen2": (2, cores), "gen2_1thread": (2, 1)}
    fns = {}
    for k, (gen, th) in cases.items():
        for n in (short, iterations):
            spec = f"synth:resnet20?iterations={n}&gen={gen}"
            fns[(k, n)] = lambda spec=spec, th=th: _run_seconds(spec, th)
    t = _alternating(fns, reps)
    numpy_s = numpy_loop_per_iteration("resnet20", max(3, reps)) * 64000
    proj = {}
    for k in cases:
        rate = max(0.0, t[(k, iterations)] - t[(k, short)]) / (iterations - short)
        proj[k] = t[(k, iterations)] + rate * (64000 - iterations)
    return {"iterations": iterations, "cores": cores,
            "seconds": {k: t[(k, iterations)] for k in cases},
            "seconds_short": {k: t[(k, short)] for k in cases}, "short_iterations": short,
            "projected_64000_s": proj, "numpy_loop_64000_s": numpy_s,
            "ratio_to_numpy_loop": {k: v / numpy_s for k, v in proj.items()},
            "threads_speedup": proj["gen2_1thread"] / proj["gen2"]}


@njit(cache=True, nogil=True)
def _spin_kernel(x, n):
    """n passes of float multiply-adds over x (L1-resident), GIL released: a compute job."""
    s = 0.0
    for _ in range(n):
        for i in range(x.shape[0]):
            s += x[i] * 1.0000001
    return s


def control_threads(cores: int, reps: int = 3) -> float:
    """How much faster ``cores`` threads finish ``cores`` equal, independent compute jobs
    than one thread finishes one of them, times ``cores``: the parallelism the machine
    offers right now (a shared host gives less than its core count)."""
    from concurrent.futures import ThreadPoolExecutor

    x = np.ones(4096)
    n = 2000
    _spin_kernel(x, 1)
    with ThreadPoolExecutor(cores) as pool:
        def many():
            t = time.perf_counter()
            list(pool.map(lambda _: _spin_kernel(x, n), range(cores)))
            return time.perf_counter() - t

        def one():
            t = time.perf_counter()
            _spin_kernel(x, n)
            return time.perf_counter() - t

        t = _alternating({"one": one, "many": many}, reps)
    return cores * t["one"] / t["many"]


def policy_threads(model: str, iterations: int, reps: int, gen: int = 2) -> dict:
    """Two threads (all cores) against one on the chunk loop (chunks fed to a ``Simulation``:
    the kernels and the engine's timing of new signatures; start-up and the first chunk, JIT
    and page faults, untimed), next to the same ratio for independent compute jobs measured
    just before and after (``control``)."""
    cores = os.cpu_count() or 1
    hw = load_hwconfig()
    trace = SynthTrace(model, iterations=iterations, gen=gen,
                       chunk=max(1, iterations // 4))

    def run(threads):
        sim = Simulation(hw, trace.meta, threads=threads)
        chunks = trace.chunks()
        first = next(chunks)
        sim.feed(first.arrays, first.t0, first.n)
        t = time.perf_counter()
        for chunk in chunks:
            sim.feed(chunk.arrays, chunk.t0, chunk.n)
        return time.perf_counter() - t

    before = control_threads(cores)
    t = _alternating({"1": lambda: run(1), str(cores): lambda: run(cores)}, reps)
    control = min(before, control_threads(cores))
    return {"model": model, "iterations": iterations, "cores": cores, "seconds": t,
            "speedup": t["1"] / t[str(cores)], "control_speedup": control}


def per_iteration_one_thread(model: str, iterations: int, gen: int = 2) -> float:
    """Seconds per iteration of the fused policy path (sgs + ars) on one thread: the per-core
    rate that projects a run onto more cores (each core streaming its own layers)."""
    hw = load_hwconfig()
    trace = SynthTrace(model, iterations=iterations, chunk=8, gen=gen)
    return seconds_per_iteration(Simulation(hw, trace.meta, threads=1), trace)


def chunk_rates(sim: Simulation, trace) -> tuple[float, float]:
    """Seconds per iteration of feeding ``trace``'s chunks to ``sim``, the first chunk fed
    before the clock starts (warm-up: JIT, page faults of the state): (over all the other
    chunks, of the fastest one: on a shared host the best-of-n a floor is timed as)."""
    chunks = trace.chunks()
    first = next(chunks)
    sim.feed(first.arrays, first.t0, first.n)
    start = time.perf_counter()
    n = 0
    fastest = float("inf")
    for chunk in chunks:
        t = time.perf_counter()
        sim.feed(chunk.arrays, chunk.t0, chunk.n)
        fastest = min(fastest, (time.perf_counter() - t) / chunk.n)
        n += chunk.n
    mean = (time.perf_counter() - start) / max(1, n)
    return mean, (fastest if n else mean)


def seconds_per_iteration(sim: Simulation, trace) -> float:
    """``chunk_rates``' rate over every chunk after the first."""
    return chunk_rates(sim, trace)[0]


def split_layer(model: str, index: int, iterations: int, reps: int) -> dict:
    """One sgs-row layer (gen=2, fused) with its rows split over all cores
    (``LayerPolicy.split``) against the serial kernel, timed in turns."""
    from .policies import LayerPolicy

    cores = os.cpu_count() or 1
    hw = load_hwconfig()
    trace = SynthTrace(model, iterations=1 << 30, gen=2)
    layer = trace.meta.layers[index]

    def run(split):
        pol = LayerPolicy(layer, hw, index)
        pol.split = split
        pol.process_source(*trace.source(index, 0, 4), 0, 4, gen=2)     # JIT, page faults
        t = time.perf_counter()
        pol.process_source(*trace.source(index, 4, iterations), 4, iterations, gen=2)
        return time.perf_counter() - t

    t = _alternating({"1": lambda: run(1), str(cores): lambda: run(cores)}, reps)
    return {"model": model, "layer": layer.name, "shape": [layer.rows, layer.cols],
            "cores": cores, "seconds": t, "speedup": t["1"] / t[str(cores)]}


def float16_trace(path, iterations: int, gen: int = 1):
    """A float16 trace directory at ``path`` of ``iterations`` of synth:resnet20 (generator
    ``gen``), chunks of 64: what the replay benchmarks read."""
    from .trace import TraceWriter

    synth = SynthTrace("resnet20", iterations=iterations, chunk=64, gen=gen)
    with TraceWriter(path, synth.meta.layers, model="resnet20", source="bench",
                     dtype="float16", chunk_iterations=64) as w:
        for chunk in synth.chunks():
            w.append_chunk(chunk.arrays)
    return path


def replay_stream(iterations: int, reps: int) -> dict:
    """A float16 ResNet-20 trace directory streamed through the policy kernels (sgs + ars,
    all cores, the reader thread on; start-up and the first chunk untimed), checksums verified
    and not, against reading the same files, page cache warm for all."""
    import tempfile
    from pathlib import Path

    from .trace import TraceDir

    hw = load_hwconfig()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="timesim-bench-") as tmp:
        path = float16_trace(Path(tmp) / "t", iterations, gen=2)
        files = sorted(path.rglob("*.npy"))
        first = {p for p in files if p.name == files[0].name}
        nbytes = sum(p.stat().st_size for p in files if p not in first)

        def raw():
            t = time.perf_counter()
            for p in files:
                if p not in first:
                    with open(p, "rb") as fh:
                        while fh.read(1 << 22):
                            pass
            return time.perf_counter() - t

        def replay(verify):
            trace = TraceDir(path)
            sim = Simulation(hw, trace.meta, threads=cores)
            chunks = trace.chunks(verify=verify)
            c = next(chunks)
            sim.feed(c.arrays, c.t0, c.n, trace.meta.dtype)
            t = time.perf_counter()
            for c in chunks:
                sim.feed(c.arrays, c.t0, c.n, trace.meta.dtype)
            return time.perf_counter() - t

        def crc():
            from .trace.reader import crc32_file

            t = time.perf_counter()
            for p in files:
                if p not in first:
                    crc32_file(p)
            return time.perf_counter() - t

        replay(True)
        t = _alternating({"raw": raw, "crc32": crc, "verified": lambda: replay(True),
                          "unverified": lambda: replay(False)}, reps)
    gbs = {k: nbytes / v / 1e9 for k, v in t.items()}
    return {"iterations": iterations, "bytes": nbytes, "seconds": t, "gb_per_s": gbs,
            "ratio_to_raw_read": {k: t[k] / t["raw"] for k in ("verified", "unverified")}}


def run_targets(quick: bool, say, bench_floor) -> dict:
    """Every target of issue 27 in one run; printed as target / measured / ratio lines.
    ``bench_floor``: bench.bench_floor (passed in: bench.py imports this module)."""
    reps = 2 if quick else 3
    e = end_to_end(512 if quick else 4096, reps)
    r20 = policy_threads("resnet20", 512 if quick else 4096, reps)
    vgg = policy_threads("vgg16", 16 if quick else 64, reps)
    splits = [split_layer("vgg16", 8, 8 if quick else 32, reps),
              split_layer("mlp", 1, 500 if quick else 2000, reps)]
    f = bench_floor("resnet50", 17 if quick else 81, reps, gen=2)
    f["one_thread_ms"] = per_iteration_one_thread("resnet50", 17 if quick else 25) * 1e3
    rp = replay_stream(256 if quick else 1024, reps)
    p, q = e["projected_64000_s"], e["ratio_to_numpy_loop"]
    say(f"issue 27 targets ({e['cores']} cores; ratios measured in this run):")
    say(f"  resnet20 x 64000 sgs+ars end to end (from {e['iterations']} it.): gen=2 "
        f"{p['gen2']:.1f} s = {q['gen2']:.2f}x the numpy policy loop ({e['numpy_loop_64000_s']:.1f}"
        f" s; target <= 0.2x); gen=1 {p['gen1']:.1f} s = {q['gen1']:.2f}x; gen=2 one thread "
        f"{p['gen2_1thread']:.1f} s")
    say(f"  resnet50 sgs+ars per iteration, gen=2: {f['fused_ms']:.2f} ms = "
        f"{f['fused_ratio_to_floor']:.2f}x the read+write floor ({f['floor_ms']:.2f} ms; both "
        f"best-of; target <= 2x); 450450 iterations at the mean {f['fused_mean_ms']:.2f} ms ~ "
        f"{f['fused_mean_ms'] * 450450 / 60000:.0f} min (target < 120);"
        f" one thread {f['one_thread_ms']:.1f} ms: on 16 cores at this per-core rate ~ "
        f"{f['one_thread_ms'] / 16 * 450450 / 60000:.0f} min, if memory bandwidth scales")
    for x in (r20, vgg):
        say(f"  {x['model']} chunk loop, {x['cores']} threads vs 1 (gen=2, {x['iterations']} "
            f"it.): {x['speedup']:.2f}x (target >= 1.7x; independent compute jobs on this "
            f"host now: {x['control_speedup']:.2f}x)")
    for x in splits:
        say(f"  one layer on every core: {x['model']} {x['layer']} ({x['shape'][0]}x"
            f"{x['shape'][1]}, sgs-row) split over {x['cores']} threads: {x['speedup']:.2f}x "
            f"the serial kernel")
    g = rp["gb_per_s"]
    say(f"  float16 replay (resnet20, {rp['bytes'] / 1e6:.0f} MB streamed): {g['verified']:.2f}"
        f" GB/s with checksums, {g['unverified']:.2f} GB/s without (target >= 2), raw read "
        f"{g['raw']:.2f} GB/s ({rp['ratio_to_raw_read']['verified']:.1f}x / "
        f"{rp['ratio_to_raw_read']['unverified']:.1f}x its time); crc32 of the same files on "
        f"one thread {g['crc32']:.2f} GB/s")
    return {"end_to_end": e, "threads_resnet20": r20, "threads_vgg16": vgg, "floor": f,
            "replay": rp, "split_layer": splits}

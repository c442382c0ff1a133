"""One run split over a Dask cluster (``timesim run --scheduler tcp://HOST:8786``).

Layers are independent in the policy path (DESIGN §2): each worker simulates a shard of the
layers (balanced by cells × iterations) over the whole trace, streaming only its layers
(a synthetic stream, or a trace directory on a filesystem every worker sees), and returns its
layers' final state, their max-writes history and their per-iteration write signatures,
run-length encoded (an sgs run changes signature only at ARS iterations). The client merges the
signatures iteration by iteration into the chip's, times them with the engine (whose result
depends only on how many iterations have each signature) and writes the same run folder as a
local run: every result field equal (tests/test_shard.py).

Checkpoints are per shard (``RUN/shards/shard-K.npz``, on the shared filesystem): with
``--resume`` each shard continues from its own last checkpoint, so a lost worker costs only its
shard since then.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .config import HwConfig
from .errors import SimulationError

log = logging.getLogger(__name__)
SHARDS = "shards"


def partition(cells: list[int], shards: int) -> list[list[int]]:
    """Layer indices in ``shards`` groups balanced by cells (largest first onto the least
    loaded); each group in layer order. Every layer runs the same iterations, so cells ×
    iterations balances as cells do."""
    k = max(1, min(shards, len(cells)))
    groups: list[list[int]] = [[] for _ in range(k)]
    load = [0] * k
    for i in sorted(range(len(cells)), key=lambda i: -cells[i]):
        j = load.index(min(load))
        groups[j].append(i)
        load[j] += cells[i]
    return [sorted(g) for g in groups if g]


class _Runs:
    """Run-length encoded per-iteration signatures of a shard: (start, row) pairs."""

    def __init__(self, starts=None, rows=None):
        self.starts: list[int] = list(starts) if starts is not None else []
        self.rows: list[np.ndarray] = list(rows) if rows is not None else []

    def add(self, t0: int, sig: np.ndarray) -> None:
        change = np.ones(len(sig), dtype=bool)
        change[1:] = (sig[1:] != sig[:-1]).any(axis=1)
        if self.rows and np.array_equal(sig[0], self.rows[-1]):
            change[0] = False
        for i in np.flatnonzero(change):
            self.starts.append(t0 + int(i))
            self.rows.append(sig[i].copy())

    def arrays(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.array(self.rows, dtype=np.int64).reshape(len(self.rows), width)
        return np.array(self.starts, dtype=np.int64), rows


def run_shard(hw: HwConfig, source: str, layers: list[int], shard: int,
              out: str | None = None, checkpoint_every: int = 0, resume: bool = False,
              fingerprint: str = "", threads: int = 1, stop_after: int | None = None, *,
              simulation: type) -> dict:
    """Worker side: simulate ``layers`` of trace ``source`` on chip ``hw`` with
    ``simulation`` (``simulate.Simulation``, handed down by ``simulate``: this module sits
    below simulate.py and does not import it). ``stop_after`` (tests): raise after that many
    iterations, as a lost worker would stop."""
    from .trace import TraceDir, open_trace

    trace = open_trace(source)
    if hasattr(trace, "bind"):
        trace.bind(hw)
    meta = trace.meta
    width = 3 * len(layers)
    runs = _Runs()
    delta = hw.write.pulses == "delta"

    def sink(ops, swaps, slots):
        n = ops.shape[0]
        sl = slots if slots is not None else np.full_like(ops[:n], -1)
        runs.add(sim.iterations, np.concatenate([ops, swaps, sl], axis=1))

    sim = simulation(hw, meta, threads=threads, layers=layers, signature_sink=sink)
    names = [meta.layers[i].name for i in layers]
    path = Path(out) / SHARDS / f"shard-{shard}.npz" if out else None
    start_chunk = 0
    resumed = 0
    if resume and path is not None and path.is_file():
        start_chunk = _load(path, sim, runs, trace, fingerprint, layers)
        resumed = sim.iterations
        log.info("shard %d: resuming at iteration %d", shard, resumed)
    last_saved = sim.iterations
    kwargs = {"layers": names} if isinstance(trace, TraceDir) else {}
    t_start = time.perf_counter()
    for chunk in trace.chunks(start_chunk, **kwargs):
        sim.feed(chunk.arrays, chunk.t0, chunk.n)
        if stop_after is not None and sim.iterations >= stop_after:
            raise SimulationError(f"shard {shard}: stopped after {sim.iterations} iterations "
                                  f"(stop_after)")
        if (checkpoint_every and path is not None and sim.iterations < meta.iterations
                and sim.iterations // checkpoint_every > last_saved // checkpoint_every):
            _save(path, sim, runs, trace, fingerprint, layers, width)
            last_saved = sim.iterations
    starts, rows = runs.arrays(width)
    return {"shard": shard, "layers": layers, "iterations": sim.iterations,
            "states": [p.state() for p in sim.policies],
            "hist_t": sim.hist_t, "hist_max": sim.hist_max,
            "starts": starts, "rows": rows, "delta": delta,
            "seconds": time.perf_counter() - t_start, "host": os.uname().nodename,
            "resumed_from": resumed}


def _save(path: Path, sim, runs: _Runs, trace, fp: str, layers: list[int], width: int) -> None:
    from .checkpoint import state_arrays, write_npz

    arrays = state_arrays(sim.policies, trace)
    arrays["starts"], arrays["rows"] = runs.arrays(width)
    info = {"fingerprint": fp, "layers": layers, "iterations": sim.iterations,
            "hist_t": sim.hist_t, "hist_max": sim.hist_max, "step": sim._step,
            "next_mark": sim._next_mark, "hwconfig": sim.hw.to_dict()}
    arrays["info"] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    write_npz(path, arrays)


def _load(path: Path, sim, runs: _Runs, trace, fp: str, layers: list[int]) -> int:
    from .checkpoint import load_state_arrays

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        info = json.loads(arrays.pop("info").tobytes().decode())
    except Exception as exc:
        raise SimulationError(f"{path}: unreadable shard checkpoint ({exc}); remove it to "
                              f"start the shard over") from None
    if info.get("fingerprint") != fp or info.get("layers") != layers:
        from .checkpoint import differences

        keys = differences(info.get("hwconfig"), sim.hw.to_dict())
        what = (f"other hwconfig values ({keys})" if keys else
                "other arguments or another split of the layers")
        raise SimulationError(f"{path}: made with {what}; rerun with the same arguments and "
                              f"workers, or another --out")
    try:
        load_state_arrays(arrays, sim.policies, trace)
    except (KeyError, ValueError) as exc:
        raise SimulationError(f"{path}: shard checkpoint does not match this run ({exc})") \
            from None
    sim.iterations = info["iterations"]
    sim.hist_t, sim.hist_max = info["hist_t"], info["hist_max"]
    sim._step, sim._next_mark = info["step"], info["next_mark"]
    runs.starts = [int(x) for x in arrays["starts"]]
    runs.rows = list(arrays["rows"])
    return sim.iterations // trace.meta.chunk_iterations


def merge_signatures(results: list[dict], L: int, T: int):
    """The chip's signatures from the shards' run-length encodings: (ops, swaps, slots,
    counts) with one row per distinct (iteration range) of the merged runs."""
    bounds = np.unique(np.concatenate([r["starts"] for r in results] + [np.array([T])]))
    bounds = bounds[bounds <= T]
    seg_start, seg_len = bounds[:-1], np.diff(bounds)
    ops = np.empty((len(seg_start), L), np.int64)
    swaps = np.empty_like(ops)
    slots = np.empty_like(ops)
    for r in results:
        idx = np.searchsorted(r["starts"], seg_start, side="right") - 1
        rows = r["rows"][idx]
        k = len(r["layers"])
        ops[:, r["layers"]] = rows[:, :k]
        swaps[:, r["layers"]] = rows[:, k:2 * k]
        slots[:, r["layers"]] = rows[:, 2 * k:]
    return ops, swaps, slots, seg_len


def simulate_sharded(hw: HwConfig, trace, scheduler, out=None, checkpoint_every: int = 0,
                     resume: bool = False, shards: int | None = None, fingerprint: str = "",
                     label: str = "", trace_fp: str = "", threads: int = 1, *,
                     simulation: type) -> dict:
    """Client side: split, run the shards on the cluster, merge, time and report (each shard
    and the merge with ``simulation``, as ``run_shard``)."""

    try:
        from distributed import Client
    except ImportError:
        raise SimulationError("--scheduler needs dask.distributed: pip install "
                              "'timesim[dist]'") from None
    if isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise SimulationError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        own = True
    else:
        client, own = scheduler, False
    try:
        workers = len(client.scheduler_info()["workers"]) or 1
        meta = trace.meta
        groups = partition([layer.cells for layer in meta.layers], shards or workers)
        source = _source(trace)
        t0 = time.perf_counter()
        futures = [client.submit(run_shard, hw, source, g, k, str(out) if out else None,
                                 checkpoint_every, resume, fingerprint, threads,
                                 simulation=simulation, pure=False,
                                 key=f"timesim-shard-{k}-{time.time_ns()}")
                   for k, g in enumerate(groups)]
        results = client.gather(futures)
        wall = time.perf_counter() - t0
    finally:
        if own:
            client.close()
    T = results[0]["iterations"]
    sim = simulation(hw, meta)
    for r in results:
        for i, st in zip(r["layers"], r["states"]):
            sim.policies[i].load_state(st)
    sim.iterations = T
    sim.hist_t = list(results[0]["hist_t"])
    cols = [None] * len(meta.layers)
    for r in results:
        if list(r["hist_t"]) != sim.hist_t:
            raise SimulationError("shards disagree on the history marks (different chunking?)")
        for j, i in enumerate(r["layers"]):
            cols[i] = [row[j] for row in r["hist_max"]]
    sim.hist_max = [list(x) for x in zip(*cols)]
    ops, swaps, slots, counts = merge_signatures(results, len(meta.layers), T)
    sim.engine.add_counts(ops, swaps, slots, counts)
    report = sim.finish(out, label, fingerprint=trace_fp)
    report["run"]["shards"] = [{"layers": [meta.layers[i].name for i in r["layers"]],
                                "seconds": r["seconds"], "host": r["host"],
                                "resumed_from": r["resumed_from"]} for r in results]
    report["run"]["cluster_seconds"] = wall
    report["run"]["overhead_seconds"] = wall - max(r["seconds"] for r in results)
    if out is not None:
        from .report import write_report_only

        write_report_only(out, report)
        import shutil

        shutil.rmtree(Path(out) / SHARDS, ignore_errors=True)
    return report


def _source(trace) -> str:
    """How a worker opens the same trace: a synthetic stream's full label, or a trace
    directory's absolute path (which every worker must see)."""
    if hasattr(trace, "path"):
        return str(Path(trace.path).resolve())
    label = getattr(trace, "label", None)
    if not label:
        raise SimulationError("--scheduler: this trace cannot be opened by a worker (give a "
                              "trace directory or a synth: stream)")
    return label

"""The simulation: trace chunks -> policy kernels -> engine -> energy and lifetime -> report.

``Simulation`` is fed chunks of gradients, from a trace (``simulate``) or live from a training
loop (``timesim.pytorch.SparseUpdate``); ``finish`` writes the same report either way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from . import checkpoint
from .area import area_report
from .config import HwConfig
from .energy import action_counts, energy_report, write_actions_csv
from .engine import Engine
from .errors import TraceError
from .faults import faults_report
from .kernels.convert import to_float32
from .kernels.select import MAX_PULSES
from .policies import LayerPolicy
from .report import (
    build_report,
    clear_run_folder,
    hwconfig_hash,
    left_digital,
    trace_fingerprint,
    write_run,
)
from .trace import open_trace
from .trace.format import TraceMeta

log = logging.getLogger(__name__)

HISTORY_POINTS = 1000
# a layer is split over the threads from this size on (smaller: the per-iteration hand-off
# between threads costs more than the layer's work)
SPLIT_CELLS = 1 << 16
# beyond this many bytes of accumulators and synthetic means (8 per cell: more than a server's
# last-level cache, e.g. 32 MB per Zen 4 CCX) the layers come from memory every iteration, and
# generated rows of 32 columns or more are hashed in the loop that adds them (1.3-1.6x there;
# on rows in cache the block-wise generator is faster): kernels/select.py STREAM
STREAM_BYTES = 32 << 20
STREAM_COLS = 32


class Simulation:
    """Per-layer policy state, the engine's signature counts and the max-writes history."""

    def __init__(self, hw: HwConfig, meta: TraceMeta, fine: bool = False,
                 expected_iterations: int | None = None, faults: bool = False,
                 threads: int = 1, layers: list[int] | None = None,
                 signature_sink: Callable | None = None):
        """``layers``: simulate only these layer indices (a shard of a run split over
        workers; shard.py) and hand each chunk's write signatures to ``signature_sink``
        instead of timing them (the client times the merged signatures)."""
        self.hw = hw
        self.faults = faults
        self.threads = max(1, int(threads))
        self.fused = True        # synthetic layers generated inside the policy kernels
        self._pool = None
        self._local = threading.local()
        self.weights: Path | None = None      # the trace's trained weights (weights.npz)
        self.evaluator = None    # scores the model on the worn chip (faults.model_accuracy)
        self.meta = meta
        self.start = time.perf_counter()
        self.layer_indices = list(range(len(meta.layers))) if layers is None else list(layers)
        self.policies = [LayerPolicy(meta.layers[i], hw, i) for i in self.layer_indices]
        streamed = 8 * sum(p.layer.cells for p in self.policies) > STREAM_BYTES
        for p in self.policies:
            p.stream_rows = streamed and p.layer.cols >= STREAM_COLS
        self.signature_sink = signature_sink
        self.engine = (Engine(hw, meta, [p.selection for p in self.policies],
                              [p.k for p in self.policies], fine=fine)
                       if signature_sink is None else None)
        self._ops = np.empty((0, len(self.policies)), dtype=np.int64)
        self._swaps = np.empty_like(self._ops)
        self._slots = np.empty_like(self._ops)
        self._scratch = np.empty(0, dtype=np.float32)
        self.iterations = 0
        total = expected_iterations or meta.iterations
        # a mark every ceil(T / 1000) iterations: at most HISTORY_POINTS (+ the last), taken
        # at the first chunk end on or after each mark (docs/metrics.md, "max_writes_history")
        self._step = max(1, -(-total // HISTORY_POINTS))
        self._next_mark = self._step
        self.hist_t: list[int] = []
        self.hist_max: list[list[int]] = []
        self.nonfinite: dict | None = None

    def _float32(self, arr: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "float32":
            return arr
        scratch = getattr(self._local, "scratch", self._scratch[:0])
        if scratch.size < arr.size:
            scratch = self._local.scratch = np.empty(arr.size, dtype=np.float32)
        return to_float32(arr, dtype, scratch[:arr.size].reshape(arr.shape))

    def _process(self, group, arrays, t0: int, n: int, dtype: str):
        """The layers of ``group`` over one chunk; the first failure as (layer index, error)."""
        for policy in group:
            try:
                source = (getattr(arrays, "source", None) if self.fused else None)
                source = source(policy.layer.name) if source is not None else None
                if not policy.needs_gradients:
                    # dense writes every cell whatever the gradient: do not even generate it
                    policy.process(np.empty((n, 0, 0), dtype=np.float32), t0)
                elif source is not None:
                    # a synthetic layer: the policy kernel generates it in registers
                    # (seed, layer, pieces[, closed-loop parameters]: kernels/loop.py)
                    policy.process_source(*source[:3], t0, n, *source[3:],
                                          gen=getattr(arrays, "gen", 1))
                elif dtype == "float16":
                    # decoded inside the policy kernel, row by row (kernels/select.py)
                    policy.process_half(np.asarray(arrays[policy.layer.name]).view(np.uint16),
                                        t0)
                else:
                    policy.process(self._float32(arrays[policy.layer.name], dtype), t0)
            except Exception as exc:
                return self.policies.index(policy), exc
        return None

    def _split_layers(self) -> list[LayerPolicy]:
        """sgs-row layers too big for the threads to balance by whole layers (more cells than
        the network's share of one thread, and at least SPLIT_CELLS): each runs alone on every
        thread, its rows split (``LayerPolicy.split``; the same results)."""
        if self.threads < 2:
            return []
        total = sum(p.layer.cells for p in self.policies)
        big = [p for p in self.policies if p.selection == "sgs-row"
               and p.layer.cells >= SPLIT_CELLS and p.layer.cells * self.threads > total]
        for p in big:
            p.split = self.threads
        return big

    def _groups(self, skip=()) -> list[list[LayerPolicy]]:
        """Layers split over the threads, largest first onto the least loaded (by cells):
        every layer is independent in the policy path (DESIGN §2). ``skip``: layers that run
        apart (``_split_layers``)."""
        policies = [p for p in self.policies if not any(p is q for q in skip)]
        k = min(self.threads, len(policies))
        groups: list[list[LayerPolicy]] = [[] for _ in range(k)]
        load = [0] * k
        for p in sorted(policies, key=lambda p: -p.layer.cells):
            i = load.index(min(load))
            groups[i].append(p)
            load[i] += p.layer.cells
        # each group in layer order: its first failure is its lowest failing layer
        order = {id(p): i for i, p in enumerate(self.policies)}
        return [sorted(g, key=lambda p: order[id(p)]) for g in groups if g]

    def feed(self, arrays: Mapping[str, np.ndarray], t0: int, n: int,
             dtype: str = "float32") -> None:
        """Iterations t0 .. t0+n-1: ``arrays[layer]`` is (n, rows, cols) in ``dtype`` storage.
        With ``threads`` > 1 the layers run on that many threads (the kernels release the
        GIL); the results do not depend on it."""
        split = self._split_layers()
        # split layers first, one after another, each on every thread (numba's); then the rest
        failures = [self._process([p], arrays, t0, n, dtype) for p in split]
        groups = self._groups(split) if self.threads > 1 else [self.policies]
        if len(groups) == 1:
            failures.append(self._process(groups[0], arrays, t0, n, dtype))
        elif groups:
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=len(groups),
                                                thread_name_prefix="timesim-layers")
            futures = [self._pool.submit(self._process, g, arrays, t0, n, dtype)
                       for g in groups]
            failures += [f.result() for f in futures]
        failures = [f for f in failures if f is not None]
        if failures:                     # the first layer's error, whatever the threads
            raise min(failures, key=lambda f: f[0])[1]
        if self._ops.shape[0] < n:
            self._ops = np.empty((n, len(self.policies)), dtype=np.int64)
            self._swaps = np.empty_like(self._ops)
            self._slots = np.empty_like(self._ops)
        for j, policy in enumerate(self.policies):
            policy.write_signature(self._ops[:, j], self._swaps[:, j], self._slots[:, j])
        if self.signature_sink is not None:
            self.signature_sink(self._ops[:n], self._swaps[:n], self._slots[:n])
        else:
            self.engine.add(self._ops[:n], self._swaps[:n], self._slots[:n])
        self.iterations = t0 + n
        if self.iterations >= self._next_mark:
            self.hist_t.append(self.iterations)
            self.hist_max.append([p.max_writes for p in self.policies])
            if len(self.hist_t) > 2 * HISTORY_POINTS:       # unknown length: thin out
                self.hist_t, self.hist_max = self.hist_t[1::2], self.hist_max[1::2]
                self._step *= 2
            self._next_mark = (self.iterations // self._step + 1) * self._step

    def finish(self, out=None, trace_label: str | None = None,
               fingerprint: str | None = None) -> dict:
        """Build the report (and the run folder when ``out``) from everything fed so far."""
        from .errors import SimulationError

        T = self.iterations
        if T == 0:
            raise SimulationError("no iterations were simulated")
        if not self.hist_t or self.hist_t[-1] != T:
            self.hist_t.append(T)
            self.hist_max.append([p.max_writes for p in self.policies])
        for policy in self.policies:
            policy.finish()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        cycles = self.engine.report()
        counts = action_counts(self.engine, self.policies, T)
        meta = dataclasses.replace(self.meta, iterations=T)
        label = trace_label if trace_label is not None else self.meta.source
        report = build_report(self.hw, _Label(meta, label), self.policies, T, 0.0)
        report["trace"]["fingerprint"] = fingerprint or trace_fingerprint(_Label(meta, label))
        report["hwconfig_hash"] = hwconfig_hash(self.hw)
        report["cycles"] = cycles
        report["seconds"] = cycles["total"] / self.hw.clock.frequency_hz
        add_training_time(report["lifetime"], report["seconds"] / T)
        report["energy_j"] = energy_report(self.engine, counts)
        report["area_mm2"] = area_report(self.hw, self.engine.mapping.floorplan,
                                        self.engine.mapping.batch_size,
                                        self.engine.mapping.write_parallel,
                                        self.engine.mapping.attention)
        report["mapping"] = self.engine.mapping.to_dict()
        report["ars"]["normalized_write_energy"] = normalized_ars_energy(self.engine, counts, T)
        capped = {p.layer.name: p.pulses_capped for p in self.policies if p.pulses_capped}
        report["writes"]["pulses_capped"] = {"cap": int(MAX_PULSES),
                                             "weights": sum(capped.values()),
                                             "by_layer": capped}
        if capped:
            log.warning("write.pulses=delta: %d written weights needed more than %d pulses and "
                        "were counted as %d (a runaway gradient?), in %s", sum(capped.values()),
                        MAX_PULSES, MAX_PULSES, ", ".join(capped))
        report["faults"] = faults_report(self.hw, self.policies, T, probe=self.faults)
        report["faults"]["accuracy"] = None
        if self.faults and (self.weights is not None or self.evaluator is not None):
            from .faults import model_accuracy

            report["faults"]["accuracy"] = model_accuracy(self.hw, self.policies, T, self.meta,
                                                          self.weights, self.evaluator)
        if self.nonfinite is not None:
            report["nonfinite"] = self.nonfinite
        report.update(left_digital(self.meta, self.hw))          # what the chip does not cover
        wall = time.perf_counter() - self.start
        report.pop("wall_s")
        report["run"] = {"created": report.pop("created"), "wall_s": wall,
                         "engine_wall_s": self.engine.wall_s, **self.engine.execution()}
        if out is not None:
            write_run(out, report, self.policies, (self.hist_t, self.hist_max),
                      lambda path: write_actions_csv(path, self.engine, counts))
        log.info("simulated %d iterations of %d layers in %.2f s", T, len(self.policies), wall)
        return report


def add_training_time(lifetime: dict, seconds_per_iteration: float) -> None:
    """Lifetime in training time at the simulated iteration time: ``seconds_to_failure`` (and
    in days) for the first cell to fail, ``seconds_to_failed_fraction`` per fraction."""
    def at(iterations):
        if iterations is None or not math.isfinite(iterations):
            return None
        return iterations * seconds_per_iteration

    lifetime["seconds_per_iteration"] = seconds_per_iteration
    lifetime["seconds_to_failure"] = at(lifetime.get("iterations_to_failure"))
    s = lifetime["seconds_to_failure"]
    lifetime["days_to_failure"] = None if s is None else s / 86400
    lifetime["seconds_to_failed_fraction"] = {
        q: at(t) for q, t in lifetime.get("iterations_to_failed_fraction", {}).items()}


def normalized_ars_energy(engine: Engine, counts: dict, T: int) -> float:
    """Paper Fig. 7: the ARS rewrite energy per iteration (the ``ars, write,
    ars_rewrite_pulse`` rows of ``actions.csv``) over the energy of writing one row (the mean
    over the network's layers of one physical row, every copy, at the pulses a cell takes).
    Both are pulses of the same energy, so the ratio is one of pulse counts."""
    rewrite = sum(n for a in counts.values() for (phase, comp, action), n in a.items()
                  if (comp, action) == ("write", "ars_rewrite_pulse"))
    row = np.mean([m.phys_cols * m.copies for m in engine.mapping.layers])
    return float(rewrite / T / (row * engine.costs.pulses_per_cell))


class _Cleaned(Mapping):
    """A chunk's layers as float32 with non-finite values zeroed, or with bad iterations
    dropped; converted one layer at a time on access (memory: one layer's chunk)."""

    def __init__(self, arrays: Mapping, dtype: str, keep: np.ndarray | None):
        self.arrays, self.dtype, self.keep = arrays, dtype, keep

    def __getitem__(self, name):
        a = np.array(to_float32(np.asarray(self.arrays[name]), self.dtype), dtype=np.float32)
        if self.keep is None:
            a[~np.isfinite(a)] = 0.0
            return a
        return np.ascontiguousarray(a[self.keep])

    def __iter__(self):
        return iter(self.arrays)

    def __len__(self):
        return len(self.arrays)


def _nonfinite_per_iteration(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Count of NaN/Inf values in each iteration of a (n, rows, cols) chunk."""
    x = np.asarray(arr)
    if dtype == "bfloat16":
        bad = (x & 0x7F80) == 0x7F80
    else:
        bad = ~np.isfinite(x)
    return bad.reshape(x.shape[0], -1).sum(axis=1)


@dataclasses.dataclass
class _Label:
    meta: TraceMeta
    label: str


def run_fingerprint(hw: HwConfig, trace_fp: str, nonfinite: str = "error") -> str:
    """What must not change between a run and its resume: the chip, the trace's content and
    how non-finite gradients are handled."""
    return checkpoint.fingerprint(hw.to_dict(), trace_fp, {"nonfinite": nonfinite})


def _has_checkpoint(out) -> bool:
    """A local checkpoint or a distributed run's shard checkpoints in ``out``."""
    out = Path(out)
    return (out / checkpoint.NAME).is_file() or any((out / "shards").glob("shard-*.npz"))


def _finished_run(out, hw: HwConfig, trace_fp: str, nonfinite: str,
                  faults: bool) -> tuple[dict | None, str]:
    """``out``'s report when it is a finished run of these same arguments (the ones a resume
    must keep: chip, trace content, --nonfinite, --faults); (None, why) when there is none;
    a finished run of other arguments is refused (SimulationError, exit 2), as a checkpoint
    of other arguments is."""
    import json

    path = Path(out) / "report.json"
    if not path.is_file():
        return None, "no checkpoint to resume from, and no finished run"
    try:
        report = json.loads(path.read_text())
        same = {
            "hwconfig": report["hwconfig_hash"] == hwconfig_hash(hw),
            "trace": report["trace"]["fingerprint"] == trace_fp,
            "--nonfinite": (report.get("nonfinite") or {}).get("policy", "error") == nonfinite,
            "--faults": bool((report.get("faults") or {}).get("probe")) == bool(faults),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None, "its report.json is unreadable and there is no checkpoint"
    differ = [k for k, v in same.items() if not v]
    if differ:      # a forgotten --trace or --set must not replace finished work
        from .errors import SimulationError

        keys = checkpoint.differences(report.get("hwconfig"), hw.to_dict())
        if keys and "hwconfig" in differ:
            differ[differ.index("hwconfig")] = f"hwconfig ({keys})"
        raise SimulationError(
            f"{out}: --resume: its finished run was made with another {' and '.join(differ)}; "
            f"pass the arguments it was made with to keep it, or leave out --resume to "
            f"replace it")
    return report, ""


def _feed_named(sim, chunk, dtype: str, trace, label: str, cleaned=None,
                skipped: int = 0) -> None:
    """``sim.feed`` one chunk (``cleaned``: its arrays and length after --nonfinite skip|zero);
    a policy kernel's non-finite error gets the trace, the chunk file (a trace on disk) and
    what to do added."""
    try:
        if cleaned is None:
            sim.feed(chunk.arrays, chunk.t0, chunk.n, dtype)
        else:
            sim.feed(cleaned[0], sim.iterations, cleaned[1])
    except TraceError as exc:
        msg = str(exc)
        if skipped:                         # the kernels count the iterations they simulated
            msg += f" (counting simulated iterations: {skipped} skipped before this chunk)"
        overflow = "overflowed" in msg or cleaned is not None   # --nonfinite cannot help
        if "non-finite" not in msg and not overflow:
            raise
        if not hasattr(trace, "path"):         # a generated stream
            hint = "" if overflow else "; --nonfinite skip|zero runs past it"
            raise TraceError(f"{label}: {msg}{hint}") from None
        from .trace.format import chunk_name

        hint = "" if overflow else ("; 'timesim trace validate' lists the chunks with "
                                    "non-finite values, --nonfinite skip|zero runs past them")
        raise TraceError(f"{label}: chunk {chunk_name(chunk.t0 // trace.meta.chunk_iterations)}"
                         f": {msg}{hint}") from None


def _say_recording(hw: HwConfig, trace) -> None:
    """One warning line where the gradients (or the fit's recording) came from training that
    applied them otherwise than this run's policy: under a sparse policy the training's own
    gradients concentrate and persist where dense training's do not (docs/fidelity.md, "From a
    dense recording"), so such a replay predicts that policy's writes low."""
    recorded, run = getattr(trace.meta, "updates", ""), hw.controller.selection
    if not recorded or run == "dense" or recorded == run:
        return
    label = getattr(trace, "label", str(getattr(trace, "path", "")))
    if recorded == "dense":
        log.warning("%s: recorded from dense SGD training, simulated under '%s': the policy's "
                    "own training writes more (from dense recordings of seven digits models: "
                    "top-k max writes down to 0.3x, SGS-ARS down to 0.55x of co-simulated "
                    "training, docs/fidelity.md 'From a dense recording'); for the policy's own "
                    "numbers record under timesim.pytorch.SparseUpdate with this hwconfig",
                    label, run)
    else:
        log.warning("%s: recorded from training under '%s' updates, simulated under '%s': a "
                    "policy's own training shapes its gradients (docs/fidelity.md); for this "
                    "policy's numbers record under timesim.pytorch.SparseUpdate with this "
                    "hwconfig", label, recorded, run)


def simulate(hw: HwConfig, trace, out=None,
             progress: Callable[[int], None] | None = None, fine: bool = False,
             checkpoint_every: int = 0, resume: bool = False,
             nonfinite: str = "error", faults: bool = False,
             threads: int | None = None, fused: bool = True, scheduler=None,
             shards: int | None = None, evaluator=None, verify: bool = True) -> dict:
    """Simulate every iteration of ``trace`` on chip ``hw``; write the run folder if ``out``.

    ``progress(n)`` is called with the number of iterations finished after each chunk.
    ``fine`` times every gradient row and write operation as its own event (slow; for checks).
    ``checkpoint_every``: save the full state into ``out`` every that many iterations (at the
    next chunk boundary); ``resume``: continue from ``out``'s checkpoint if there is one.
    ``nonfinite``: a NaN/Inf gradient is an error naming layer and iteration (``error``), or
    its iteration is dropped for every layer (``skip``, as a loss scaler skips a step), or the
    values are replaced by 0 (``zero``); both opt-ins are counted in the report.
    ``faults``: also measure each worn layer's analog MVM error (report ``faults``; seconds
    per large network, so opt-in; the failed fractions are always there).
    ``threads``: layers processed on that many threads (default: all cores); results are
    identical for every count.
    ``fused``: a synthetic layer is generated inside its policy kernel (no gradient chunk in
    memory); False generates each chunk first, as for a trace file (identical results; for
    checks and benchmarks).
    ``scheduler``: a Dask scheduler address (or a ``distributed.Client``): the layers are
    split into ``shards`` (default: one per worker) simulated on the cluster, and merged
    here into the same report (shard.py); ``threads`` is then per worker (default 1).
    ``evaluator``: with ``faults``, ``module:function`` (or the function) that scores the
    trace's model on the worn chip (report ``faults.accuracy``; ``faults.model_accuracy``).
    ``verify``: check each chunk file's crc32 against the manifest before using it (False:
    a trace already checked, e.g. by ``timesim trace validate``; replay then runs at the
    kernels' speed, the checksums cost ~1 s per 2-3 GB on one core).
    """
    if nonfinite not in ("error", "skip", "zero"):
        from .errors import ConfigError

        raise ConfigError(f"nonfinite: must be error, skip or zero, got {nonfinite!r}")
    trace = open_trace(trace)
    fp_trace = trace_fingerprint(trace)
    _say_recording(hw, trace)
    if out is not None and not resume:
        if clear_run_folder(out):
            log.warning("%s: replacing the earlier run in this folder", out)
        if (Path(out) / checkpoint.NAME).is_file():
            log.warning("%s: discarding its checkpoint (pass --resume to continue from it)",
                        out)
            (Path(out) / checkpoint.NAME).unlink()
    if out is not None and resume and not _has_checkpoint(out):
        done, why = _finished_run(out, hw, fp_trace, nonfinite, faults)
        if done is not None:
            log.warning("%s: this run is finished (%d iterations); nothing to resume, its "
                        "report is kept as it is (without --resume the run starts over)",
                        out, done["iterations"])
            return done
        log.warning("%s: %s; starting from the beginning", out, why)
        clear_run_folder(out)
        resume = False
    if trace.meta.timing_only:
        from .estimate import estimate
        from .report import write_report_only

        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
        report = estimate(hw, trace.meta,
                          actions_csv=Path(out) / "actions.csv" if out is not None else None)
        report["trace"]["path"] = getattr(trace, "label", report["trace"]["path"])
        report["trace"]["fingerprint"] = fp_trace
        report["hwconfig_hash"] = hwconfig_hash(hw)
        if out is not None:
            write_report_only(out, report)
        return report
    if hasattr(trace, "bind"):
        trace.bind(hw)
    label = getattr(trace, "label", str(getattr(trace, "path", "")))
    if threads is None:
        threads = None if scheduler is not None else (os.cpu_count() or 1)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        from .errors import ConfigError

        raise ConfigError(f"threads: must be a positive integer, got {threads!r}")
    if scheduler is not None:
        from .errors import ConfigError
        from .shard import simulate_sharded

        if nonfinite != "error" or fine or faults or evaluator is not None or not verify:
            raise ConfigError("--scheduler: runs with --nonfinite skip/zero, fine timing, "
                              "--faults or --no-verify are local only")
        fp = run_fingerprint(hw, fp_trace, nonfinite) if out is not None else ""
        return simulate_sharded(hw, trace, scheduler, out=out,
                                checkpoint_every=checkpoint_every, resume=resume,
                                shards=shards, fingerprint=fp, label=label,
                                trace_fp=fp_trace, threads=threads or 1,
                                simulation=Simulation)
    sim = Simulation(hw, trace.meta, fine=fine, faults=faults, threads=threads)
    sim.fused = bool(fused)
    sim.evaluator = evaluator
    if faults and hasattr(trace, "path") and (Path(trace.path) / "weights.npz").is_file():
        sim.weights = Path(trace.path) / "weights.npz"
    start_chunk = 0
    fp = ""
    dtype = trace.meta.dtype
    names = [layer.name for layer in trace.meta.layers]
    found = dict.fromkeys(names, 0)
    skipped = 0
    if out is not None and (checkpoint_every or resume):
        out = Path(out)
        fp = run_fingerprint(hw, fp_trace, nonfinite)
        if resume and (out / checkpoint.NAME).is_file():
            state = checkpoint.load(out, sim, trace, fp)
            # the trace position, not the iterations simulated: with --nonfinite skip they
            # differ by the iterations dropped
            pos = int(state.get("trace_pos", state["iterations"]))
            start_chunk = pos // trace.meta.chunk_iterations
            found.update(state.get("found", {}))
            skipped = int(state.get("skipped", 0))
            log.info("resuming %s at iteration %d", out, pos)
        elif resume:
            log.warning("%s: its checkpoints are a distributed run's (shards/); resume it with "
                        "--scheduler, or this local run starts from the beginning", out)
            clear_run_folder(out)
    last_saved = sim.iterations
    for chunk in trace.chunks(start_chunk, verify=verify):
        if nonfinite == "error":
            _feed_named(sim, chunk, dtype, trace, label)
        else:
            per_iter = np.zeros(chunk.n, dtype=np.int64)
            for name in names:
                counts = _nonfinite_per_iteration(chunk.arrays[name], dtype)
                found[name] += int(counts.sum())
                per_iter += counts
            keep = per_iter == 0 if nonfinite == "skip" else None
            n = chunk.n if keep is None else int(keep.sum())
            if n:
                _feed_named(sim, chunk, dtype, trace, label,
                            cleaned=(_Cleaned(chunk.arrays, dtype, keep), n), skipped=skipped)
            skipped += chunk.n - n
        if progress is not None:
            progress(chunk.t0 + chunk.n)
        if (checkpoint_every and out is not None and chunk.t0 + chunk.n < trace.meta.iterations
                and sim.iterations // checkpoint_every > last_saved // checkpoint_every):
            checkpoint.save(out, sim, trace, fp, {"trace_pos": chunk.t0 + chunk.n,
                                                  "found": found, "skipped": skipped})
            last_saved = sim.iterations
    if nonfinite != "error":
        sim.nonfinite = {"policy": nonfinite, "iterations_skipped": skipped,
                         "values_zeroed": sum(found.values()) if nonfinite == "zero" else 0,
                         "by_layer": {k: v for k, v in found.items() if v}}
    report = sim.finish(out, label, fingerprint=fp_trace)
    if out is not None:
        (Path(out) / checkpoint.NAME).unlink(missing_ok=True)
    return report

"""Cycle-level engine: timing of training iterations on the chip (simpy).

The engine never sees gradients. The policy kernels hand it, per iteration and layer, the write
signature (write operations, ARS swaps). Everything in an iteration but the writes depends only
on the ARS swaps, so it is simulated once per distinct swap vector
(``iteration.simulate_iteration``); the writes, the last thing each layer does, are then
list-scheduled on the chip-wide write slots once per distinct write signature
(``iteration.schedule_writes``). ``fine`` mode simulates every distinct signature in full, one
event per gradient row and write operation, the writes as simpy processes queueing on a
Resource, and must give the same cycles (tests check it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import zlib
from collections.abc import Sequence

import numpy as np

from ..config import HwConfig
from ..mapping import NetworkMapping, map_network
from ..trace.format import TraceMeta
from .components import PHASES, union_length
from .costs import CostTable, LayerTiming
from .iteration import (
    WRITE,
    IterationResult,
    LayerWork,
    schedule_writes,
    simulate_iteration,
    simulate_writes,
)

MAX_DISTINCT = 100_000       # distinct signatures counted (and results cached)

log = logging.getLogger(__name__)


def _distinct_rows(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows of ``sig``, how many times each occurs), in any order. A chunk is
    mostly one signature (sgs: only ARS iterations differ), so the rows unlike the first
    are counted in a dict when they are few; np.unique sorts the rest."""
    ref = 0
    other = np.flatnonzero((sig != sig[ref]).any(axis=1))
    if other.size > sig.shape[0] // 2:           # the first row is the odd one out
        ref = int(other[0])
        other = np.flatnonzero((sig != sig[ref]).any(axis=1))
    if other.size == 0:
        return sig[:1], np.array([sig.shape[0]])
    if other.size > 64:
        return np.unique(sig, axis=0, return_counts=True)
    rows: dict[bytes, list[int]] = {sig[ref].tobytes(): [ref, sig.shape[0] - other.size]}
    for i in other:
        seen = rows.setdefault(sig[i].tobytes(), [int(i), 0])
        seen[1] += 1
    return sig[[v[0] for v in rows.values()]], np.array([v[1] for v in rows.values()])


class Engine:
    """Collects write signatures during a run, then times them and reports cycles."""

    def __init__(self, hw: HwConfig, meta: TraceMeta, selections: Sequence[str],
                 ks: Sequence[int], fine: bool = False):
        self.hw = hw
        self.meta = meta
        self.selections = list(selections)
        self.fine = fine
        self.mapping: NetworkMapping = map_network(meta.layers, hw, meta.batch_size,
                                                   meta.left_out)
        self.costs = CostTable(hw, self.mapping.floorplan)
        batch = self.mapping.batch_size
        self.timings: list[LayerTiming] = [
            self.costs.layer(m, sel, k, batch, self.mapping.write_parallel)
            for m, sel, k in zip(self.mapping.layers, selections, ks)]
        self._base: dict[tuple[int, ...], IterationResult] = {}
        self._writes: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}
        self._write_cost = self._compute_write_cost()
        self.iterations = 0
        self.total_cycles = 0
        self.spans = np.zeros((len(self.timings), len(PHASES)), dtype=np.int64)
        self.chip_spans = np.zeros(len(PHASES), dtype=np.int64)
        self.busy = np.zeros((len(self.timings), len(PHASES)), dtype=np.int64)
        self.chip_busy = np.zeros(len(PHASES), dtype=np.int64)
        self.events = 0
        self.simulated = 0           # iterations simulated in simpy (cache misses)
        self.derived = 0             # ... derived from the one without swaps (``_shifted``)
        self.simpy_wall_s = 0.0      # seconds in those simulations
        self.cache_clears = 0        # result caches emptied at MAX_DISTINCT entries
        self._seen: set[int] | None = set()
        self._add_wall = 0.0
        self.wall_s = 0.0

    @property
    def reprogram_cycles(self) -> int:
        """Per iteration, when the network is time-multiplexed: the crossbars that do not fit
        are reprogrammed row by row, all available crossbars in parallel."""
        m = self.mapping
        if not m.multiplexed:
            return 0
        excess = m.crossbars_needed - m.crossbars_available
        rounds = math.ceil(excess / m.crossbars_available)
        x, w = self.hw.xbar, self.hw.write
        row = math.ceil(x.cols / w.drivers_per_xbar) * self.costs.row_write_group
        return rounds * x.rows * row

    @property
    def reprogram_cells(self) -> int:
        m = self.mapping
        excess = max(0, m.crossbars_needed - m.crossbars_available)
        return excess * self.hw.xbar.rows * self.hw.xbar.cols

    def _compute_write_cost(self) -> tuple[np.ndarray, ...]:
        """Per layer: (is dense, dense write operations per array, cycles per write operation,
        arrays written per iteration, cycles per pulse slot of one operation, verify cycles
        per operation). Copies take the same data at the same time (broadcast) and count once
        toward ``write.parallel_arrays``."""
        dense, dense_ops, op, jobs, slot, verify = [], [], [], [], [], []
        c = self.costs
        for t, m, sel in zip(self.timings, self.mapping.layers, self.selections):
            dense.append(sel == "dense")
            # dense: every row of every array, rows of an array one by one
            dense_ops.append(min(self.hw.xbar.rows, m.rows))
            # sgs-row: one row (in each column tile); sgs-element: one weight; topk: one
            # operation per touched row, one after another, each ⌈selected cells of the row /
            # drivers⌉ groups of cells (the kernel counts the groups as pulse slots: a slot is
            # then a group's SET and RESET phases, or with write.pulses=delta one pulse)
            row = sel in ("sgs-row", "dense")
            op.append(t.row_write if row else t.cell_write)
            jobs.append(t.write_jobs)
            if sel == "topk":
                slot.append(c.pulse if self.hw.write.pulses == "delta" else c.row_write_group)
            else:
                cells = min(self.hw.xbar.cols, m.phys_cols) if row else m.cells_per_weight
                slot.append(-(-cells // self.hw.write.drivers_per_xbar) * c.pulse)
            verify.append(c.verify)
        return tuple(np.array(x, dtype=np.int64) if i else np.array(x)
                     for i, x in enumerate((dense, dense_ops, op, jobs, slot, verify)))

    def add(self, ops: np.ndarray, swaps: np.ndarray, slots: np.ndarray | None = None) -> None:
        """Time n iterations: ``ops`` and ``swaps`` are (n, layers) integer arrays; ``slots``
        too, or None (the pulse slots of each layer's writes: with write.pulses=delta a write's
        SET and RESET phases last as long as their longest cell; topk's groups of cells per
        touched row; -1 or None: the fixed time of ``ops`` write operations). Memory does not
        grow with the number of iterations."""
        n = ops.shape[0]
        if n == 0:
            return
        t_start = time.perf_counter()
        self._add(ops, swaps, slots, n)
        self._add_wall += time.perf_counter() - t_start

    def add_counts(self, ops: np.ndarray, swaps: np.ndarray, slots: np.ndarray | None,
                   counts: np.ndarray) -> None:
        """Time ``counts[k]`` iterations of signature k: the rows of ``ops``, ``swaps`` (and
        ``slots``) as in ``add``. The engine's results depend only on how many iterations
        have each signature, so this equals ``add`` on the iterations in any order (a run
        split over workers merges their signatures this way)."""
        counts = np.asarray(counts, dtype=np.int64)
        if counts.sum() == 0:
            return
        t_start = time.perf_counter()
        self.iterations += int(counts.sum())
        sig = self._signature(ops, swaps, slots)
        uniq, inverse = np.unique(sig, axis=0, return_inverse=True)
        merged = np.bincount(inverse.ravel(), weights=counts, minlength=len(uniq))
        self._count_distinct(uniq)
        self._accumulate(uniq, merged.astype(np.int64), sig.shape[1] // 3)
        self._add_wall += time.perf_counter() - t_start

    def _signature(self, ops, swaps, slots) -> np.ndarray:
        dense, dense_ops = self._write_cost[:2]
        ops = np.where(dense[None, :], dense_ops[None, :], ops)
        if slots is None:
            slots = np.full_like(ops, -1)          # fixed pulses: from the cost table
        return np.concatenate([ops, swaps, slots], axis=1)

    def _add(self, ops: np.ndarray, swaps: np.ndarray, slots: np.ndarray | None, n: int
             ) -> None:
        self.iterations += n
        sig = self._signature(ops, swaps, slots)
        uniq, counts = _distinct_rows(sig)
        self._count_distinct(uniq)
        self._accumulate(uniq, counts, ops.shape[1])

    def _accumulate(self, uniq: np.ndarray, counts: np.ndarray, L: int) -> None:
        for row, count in zip(uniq, counts):
            key = tuple(int(v) for v in row)
            cycles, spans, chip, busy, chip_busy = self._iteration(key[:L], key[L:2 * L],
                                                                   key[2 * L:])
            self.total_cycles += cycles * int(count)
            self.spans += spans * int(count)
            self.chip_spans += chip * int(count)
            self.busy += busy * int(count)
            self.chip_busy += chip_busy * int(count)

    def _iteration(self, ops: tuple[int, ...], swaps: tuple[int, ...], slots: tuple[int, ...]
                   ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(cycles, spans per layer and phase, spans per phase, busy per layer and phase,
        busy per phase) of one iteration with this signature."""
        key = ops + swaps + slots
        hit = self._writes.get(key)
        if hit is not None:
            return hit
        base = self._phase_a(swaps)
        _, _, op, jobs, slot, verify = self._write_cost
        ops_a = np.array(ops, dtype=np.int64)
        slots_a = np.array(slots, dtype=np.int64)
        # a job's cycles: fixed pulses, ops x (cycles of one operation); delta, the pulse slots
        # its operations take (the cycles of one slot each) plus their verify reads
        durations = np.where(slots_a < 0, ops_a * op, slots_a * slot + ops_a * verify)
        par = self.mapping.write_parallel
        work: list[tuple[int, int, int]] = []
        if self.fine:
            ws, we = simulate_writes(base.write_ready, jobs, ops_a, durations, par, work)
        else:
            ws, we = schedule_writes(base.write_ready, jobs, durations, par, work)
        busy, chip_busy = base.busy.copy(), base.chip_busy.copy()
        if work:
            iv = np.array(work, dtype=np.int64)
            chip_busy[WRITE] = union_length(iv[:, 1], iv[:, 2])
            for i in np.unique(iv[:, 0]):
                sel = iv[:, 0] == i
                busy[i, WRITE] = union_length(iv[sel, 1], iv[sel, 2])
        spans = base.spans.copy()
        spans[:, WRITE] = we - ws
        start, end = base.start.copy(), base.end.copy()
        wrote = we > ws
        start[:, WRITE] = np.where(wrote, ws, np.iinfo(np.int64).max)
        end[:, WRITE] = np.where(wrote, we, -1)
        # each phase on the chip: from its first start in any layer to its last end
        happened = (end >= 0).any(axis=0)
        chip = np.where(happened, end.max(axis=0) - start.min(axis=0), 0)
        cycles = max(base.cycles, int(we.max()))
        if len(self._writes) >= MAX_DISTINCT:
            self._clear(self._writes)
        self._writes[key] = (cycles, spans, chip, busy, chip_busy)
        return cycles, spans, chip, busy, chip_busy

    def _phase_a(self, swaps: tuple[int, ...]) -> IterationResult:
        if swaps not in self._base:
            shifted = None if self.fine or not any(swaps) else self._shifted(swaps)
            if shifted is not None:
                self.derived += 1
                if len(self._base) >= MAX_DISTINCT:
                    self._clear(self._base)
                self._base[swaps] = shifted
                return shifted
            work = [LayerWork(timing=t, swaps=s) for t, s in zip(self.timings, swaps)]
            e = self.hw.engine
            t0 = time.perf_counter()
            res = simulate_iteration(work, self.reprogram_cycles, self.fine, e.pipeline,
                                     self.hw.gradient.units, self.hw.gradient.storage,
                                     self.hw.attention.units)
            self.simpy_wall_s += time.perf_counter() - t0
            self.events += res.events
            self.simulated += 1
            if len(self._base) >= MAX_DISTINCT:
                self._clear(self._base)
            self._base[swaps] = res
        return self._base[swaps]

    def _shifted(self, swaps: tuple[int, ...]) -> IterationResult | None:
        """The iteration with these ARS swaps derived from the one without any, when the
        swaps cannot change its order of events (None when they might: simulate it).

        ARS runs first, on each layer's own arrays (``ArsController``), and gates only that
        layer's forward and backward stages; every other process of the iteration waits,
        through the layers' stores and events, for layer 0's forward. So layer 0's pass of
        a₀ cycles delays the whole iteration by a₀, and layer j's pass of a_j changes nothing
        else if it ends before layer j's stages, so delayed, would start:
        R + a_j < a₀ + (layer j's first forward or backward wave without swaps), R the
        reprogramming before ARS. Then every span moves by a₀, the ARS spans are [R, R + a_j]
        and busy times do not change (tests/test_engine_v2.py compares this with the full
        simulation on random swaps, pipelines and storages)."""
        zero = (0,) * len(swaps)
        base = self._phase_a(zero)
        a = [s * (2 * t.row_read + 2 * t.row_write) for s, t in zip(swaps, self.timings)]
        R = self.reprogram_cycles
        FW, BW, ARS, REP = (PHASES.index(p) for p in ("forward", "backward", "ars",
                                                        "reprogram"))
        shift = a[0]
        for j in range(1, len(a)):
            need = min(int(base.start[j, FW]), int(base.start[j, BW]))
            if a[j] > 0 and not R + a[j] < shift + need:
                return None
        start, end = base.start.copy(), base.end.copy()
        moved = end >= 0
        moved[:, REP] = False
        start[moved] += shift
        end[moved] += shift
        busy, chip_busy = base.busy.copy(), base.chip_busy.copy()
        for j, aj in enumerate(a):
            if aj > 0:
                start[j, ARS], end[j, ARS] = R, R + aj
                busy[j, ARS] = aj
        chip_busy[ARS] = max(a)
        return IterationResult(cycles=base.cycles + shift,
                               spans=np.where(end >= 0, end - start, 0), start=start, end=end,
                               busy=busy, chip_busy=chip_busy, events=0,
                               write_ready=tuple(w + shift for w in base.write_ready))

    def _clear(self, cache: dict) -> None:
        """A cache full at MAX_DISTINCT entries starts over (memory stays bounded; results
        are unchanged, repeated signatures are simulated again)."""
        if self.cache_clears == 0:
            log.warning("engine: more than %d distinct write signatures; its caches start "
                        "over (results unchanged, slower; report: run.engine_cache_clears)",
                        MAX_DISTINCT)
        self.cache_clears += 1
        cache.clear()

    def _count_distinct(self, uniq: np.ndarray) -> None:
        """Remember the distinct signatures ``uniq`` (rows, each once)."""
        if self._seen is None:
            return
        for row in uniq:
            self._seen.add(zlib.crc32(np.ascontiguousarray(row).tobytes()))
        if len(self._seen) > MAX_DISTINCT:
            self._seen = None                 # too many to count; reported as null
            log.warning("engine: more than %d distinct write signatures: "
                        "cycles.distinct_signatures is reported as null", MAX_DISTINCT)

    def set_activity(self, activity: dict[str, float | None]) -> None:
        """Input-bit activity measured during a live run (energy only; timing is unchanged)."""
        layers = tuple(m if activity.get(m.name) is None
                       else dataclasses.replace(m, activity=float(activity[m.name]))
                       for m in self.mapping.layers)
        self.mapping = dataclasses.replace(self.mapping, layers=layers)

    def execution(self) -> dict:
        """How the engine got there (depends on resumes; not a result): for report["run"]."""
        return {"engine_simulated_iterations": self.simulated,
                "engine_derived_iterations": self.derived,
                "engine_simpy_wall_s": self.simpy_wall_s,
                "engine_cache_clears": self.cache_clears,
                "engine_events": self.events,
                "engine_events_per_s": self.events / self.wall_s if self.wall_s > 0 else None}

    def state(self) -> dict:
        """Accumulated timing, for checkpoints."""
        return {"total_cycles": self.total_cycles, "spans": self.spans.tolist(),
                "chip_spans": self.chip_spans.tolist(), "busy": self.busy.tolist(),
                "chip_busy": self.chip_busy.tolist(),
                "iterations": self.iterations, "events": self.events,
                "seen": None if self._seen is None else sorted(self._seen)}

    def load_state(self, st: dict) -> None:
        self.total_cycles = int(st["total_cycles"])
        self.spans = np.array(st["spans"], dtype=np.int64)
        self.chip_spans = np.array(st["chip_spans"], dtype=np.int64)
        if "busy" not in st:
            from ..errors import SimulationError

            raise SimulationError("checkpoint written by an older timesim (no busy cycles); "
                                  "remove it to start over")
        self.busy = np.array(st["busy"], dtype=np.int64)
        self.chip_busy = np.array(st["chip_busy"], dtype=np.int64)
        self.iterations = int(st["iterations"])
        self.events = int(st["events"])
        self._seen = None if st["seen"] is None else set(st["seen"])

    def report(self) -> dict:
        """The report's ``cycles`` section (and ``seconds``)."""
        names = [m.name for m in self.mapping.layers]
        start = time.perf_counter()
        by_layer_phase = {n: {ph: int(self.spans[i, j]) for j, ph in enumerate(PHASES)}
                          for i, n in enumerate(names)}
        by_phase = {ph: int(self.chip_spans[j]) for j, ph in enumerate(PHASES)}
        layer_sum = {ph: int(self.spans[:, j].sum()) for j, ph in enumerate(PHASES)}
        busy_layer_phase = {n: {ph: int(self.busy[i, j]) for j, ph in enumerate(PHASES)}
                            for i, n in enumerate(names)}
        busy_phase = {ph: int(self.chip_busy[j]) for j, ph in enumerate(PHASES)}
        if not self.mapping.multiplexed:
            by_phase.pop("reprogram")
            layer_sum.pop("reprogram")
            busy_phase.pop("reprogram")
            for v in (*by_layer_phase.values(), *busy_layer_phase.values()):
                v.pop("reprogram")
        T = max(1, self.iterations)
        self.wall_s = time.perf_counter() - start + self._add_wall
        return {
            "total": self.total_cycles,
            "per_iteration": self.total_cycles / T,
            "by_phase": by_phase,
            "by_phase_layer_sum": layer_sum,
            "by_layer": {n: sum(v.values()) for n, v in by_layer_phase.items()},
            "by_layer_phase": by_layer_phase,
            "busy_by_phase": busy_phase,
            "busy_by_layer_phase": busy_layer_phase,
            "distinct_signatures": None if self._seen is None else len(self._seen),
            "mode": "fine" if self.fine else "fast",
            "pipeline": self.hw.engine.pipeline,
            "clock_hz": self.hw.clock.frequency_hz,
        }

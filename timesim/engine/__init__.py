"""Cycle-level engine: timing and energy of TIME training iterations (simpy).

The engine never sees gradients. The policy kernels hand it, per iteration and layer, the write
signature (write operations, ARS swaps); iterations with the same signature over all layers have
the same timing, so each distinct signature is simulated once (``fast``) and multiplied by its
count. ``fine`` mode simulates one event per gradient row and write operation and must give the
same cycles (tests check it).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence

import numpy as np

from ..config import HwConfig
from ..mapping import NetworkMapping, map_network
from ..trace.format import TraceMeta
from .components import PHASES
from .costs import CostTable, LayerTiming
from .iteration import IterationResult, LayerWork, simulate_iteration

MAX_DISTINCT = 100_000       # distinct signatures counted (and fine-mode results cached)


class Engine:
    """Collects write signatures during a run, then times them and reports cycles."""

    def __init__(self, hw: HwConfig, meta: TraceMeta, selections: Sequence[str],
                 ks: Sequence[int], fine: bool = False):
        self.hw = hw
        self.meta = meta
        self.selections = list(selections)
        self.fine = fine
        self.mapping: NetworkMapping = map_network(meta.layers, hw, meta.batch_size)
        self.costs = CostTable(hw)
        self.timings: list[LayerTiming] = [
            self.costs.layer(m, sel, k) for m, sel, k in zip(self.mapping.layers, selections, ks)]
        self._cache: dict[tuple[int, ...], IterationResult] = {}
        self._base: dict[tuple[int, ...], IterationResult] = {}
        self._write_cost = self._compute_write_cost()
        self.iterations = 0
        self.total_cycles = 0
        self.busy = np.zeros((len(self.timings), len(PHASES)), dtype=np.int64)
        self.events = 0
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

    def _compute_write_cost(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per layer: (is dense, dense write operations, cycles per write operation)."""
        dense, dense_ops, op = [], [], []
        for t, m, sel in zip(self.timings, self.mapping.layers, self.selections):
            dense.append(sel == "dense")
            # dense: every row; row blocks program in parallel, rows of a block one by one
            dense_ops.append(min(self.hw.xbar.rows, m.rows))
            # sgs-row: one row; sgs-element: one weight; topk: one operation per touched row
            op.append(t.row_write if sel in ("sgs-row", "dense") else t.cell_write)
        return (np.array(dense), np.array(dense_ops, dtype=np.int64),
                np.array(op, dtype=np.int64))

    def add(self, ops: np.ndarray, swaps: np.ndarray) -> None:
        """Time n iterations: ``ops`` and ``swaps`` are (n, layers) integer arrays.

        A layer's write is the last thing it does in an iteration and blocks nothing else, so
        the iteration is simulated (simpy) once per distinct vector of ARS swaps with no writes;
        each iteration's makespan is then max(that makespan, max over layers of the layer's write
        start + its write time). Fine mode simulates every iteration's signature in full, one
        event per gradient row and write operation (tests check both agree). Memory does not
        grow with the number of iterations.
        """
        n = ops.shape[0]
        if n == 0:
            return
        t_start = time.perf_counter()
        self._add(ops, swaps, n)
        self._add_wall += time.perf_counter() - t_start

    def _add(self, ops: np.ndarray, swaps: np.ndarray, n: int) -> None:
        self.iterations += n
        self._count_distinct(np.concatenate([ops, swaps], axis=1))
        if swaps.any():
            uniq, inverse = np.unique(swaps, axis=0, return_inverse=True)
            groups = [(tuple(int(v) for v in u), inverse.ravel() == g)
                      for g, u in enumerate(uniq)]
        else:
            groups = [(tuple([0] * swaps.shape[1]), slice(None))]
        dense, dense_ops, op = self._write_cost
        for sw, rows in groups:
            o = ops[rows]
            if self.fine:
                for row in o:
                    self._accumulate(self._full(tuple(int(v) for v in row) + sw))
                continue
            base = self._base_result(sw)
            t = np.where(dense[None, :], dense_ops[None, :], o) * op[None, :]
            start = np.array(base.write_start, dtype=np.int64)
            ends = np.maximum(base.cycles, (start[None, :] + t).max(axis=1))
            self.total_cycles += int(ends.sum())
            self.busy += self._busy_matrix(base) * o.shape[0]
            self.busy[:, PHASES.index("write")] += t.sum(axis=0)

    def _count_distinct(self, sig: np.ndarray) -> None:
        if self._seen is None:
            return
        same = sig.shape[0] == 1 or bool((sig == sig[0]).all())
        for row in (sig[:1] if same else np.unique(sig, axis=0)):
            self._seen.add(zlib.crc32(np.ascontiguousarray(row).tobytes()))
        if len(self._seen) > MAX_DISTINCT:
            self._seen = None                 # too many to count; reported as null

    def _busy_matrix(self, res: IterationResult) -> np.ndarray:
        return np.array([[b[ph] for ph in PHASES] for b in res.busy], dtype=np.int64)

    def _accumulate(self, res: IterationResult) -> None:
        self.total_cycles += res.cycles
        self.busy += self._busy_matrix(res)

    def _work(self, key: tuple[int, ...], writes: bool = True) -> list[LayerWork]:
        L = len(self.timings)
        ops, swaps = key[:L], key[L:]
        dense, dense_ops, op = self._write_cost
        return [LayerWork(timing=t, rows=m.rows,
                          write_ops=(int(dense_ops[i]) if dense[i] else ops[i]) if writes else 0,
                          write_op_cycles=int(op[i]), swaps=swaps[i])
                for i, (t, m) in enumerate(zip(self.timings, self.mapping.layers))]

    def _base_result(self, swaps: tuple[int, ...]) -> IterationResult:
        if swaps not in self._base:
            key = tuple([0] * len(swaps)) + swaps
            self._base[swaps] = simulate_iteration(self._work(key, writes=False),
                                                   self.reprogram_cycles, False)
            self.events += self._base[swaps].events
        return self._base[swaps]

    def _full(self, key: tuple[int, ...]) -> IterationResult:
        if key not in self._cache:
            res = simulate_iteration(self._work(key), self.reprogram_cycles, True)
            self.events += res.events
            if len(self._cache) >= MAX_DISTINCT:
                self._cache.clear()
            self._cache[key] = res
        return self._cache[key]

    def execution(self) -> dict:
        """How the engine got there (depends on resumes; not a result): for report["run"]."""
        return {"engine_simulated_iterations": len(self._base) + len(self._cache),
                "engine_events": self.events,
                "engine_events_per_s": self.events / self.wall_s if self.wall_s > 0 else None}

    def state(self) -> dict:
        """Accumulated timing, for checkpoints."""
        return {"total_cycles": self.total_cycles, "busy": self.busy.tolist(),
                "iterations": self.iterations, "events": self.events,
                "seen": None if self._seen is None else sorted(self._seen)}

    def load_state(self, st: dict) -> None:
        self.total_cycles = int(st["total_cycles"])
        self.busy = np.array(st["busy"], dtype=np.int64)
        self.iterations = int(st["iterations"])
        self.events = int(st["events"])
        self._seen = None if st["seen"] is None else set(st["seen"])

    def report(self) -> dict:
        """The report's ``cycles`` section (and ``seconds``)."""
        names = [m.name for m in self.mapping.layers]
        start = time.perf_counter()
        by_layer_phase = {n: {ph: int(self.busy[i, j]) for j, ph in enumerate(PHASES)}
                          for i, n in enumerate(names)}
        by_phase = {ph: int(self.busy[:, j].sum()) for j, ph in enumerate(PHASES)}
        if not self.mapping.multiplexed:
            by_phase.pop("reprogram")
            for v in by_layer_phase.values():
                v.pop("reprogram")
        T = max(1, self.iterations)
        self.wall_s = time.perf_counter() - start + self._add_wall
        return {
            "total": self.total_cycles,
            "per_iteration": self.total_cycles / T,
            "by_phase": by_phase,
            "by_layer": {n: sum(v.values()) for n, v in by_layer_phase.items()},
            "by_layer_phase": by_layer_phase,
            "distinct_signatures": None if self._seen is None else len(self._seen),
            "mode": "fine" if self.fine else "fast",
            "clock_hz": self.hw.clock.frequency_hz,
        }

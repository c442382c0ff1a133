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
from collections.abc import Sequence

import numpy as np

from ..config import HwConfig
from ..mapping import NetworkMapping, map_network
from ..trace.format import TraceMeta
from .components import PHASES
from .costs import CostTable, LayerTiming
from .iteration import IterationResult, LayerWork, simulate_iteration


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
        self.signatures: dict[tuple[int, ...], int] = {}
        self._cache: dict[tuple[int, ...], IterationResult] = {}
        self.iterations = 0

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

    def add(self, ops: np.ndarray, swaps: np.ndarray) -> None:
        """Record n iterations: ``ops`` and ``swaps`` are (n, layers) integer arrays."""
        n = ops.shape[0]
        if n == 0:
            return
        sig = np.concatenate([ops, swaps], axis=1)
        if n == 1 or (sig == sig[0]).all():
            key = tuple(int(v) for v in sig[0])
            self.signatures[key] = self.signatures.get(key, 0) + n
        else:
            uniq, counts = np.unique(sig, axis=0, return_counts=True)
            for row, c in zip(uniq, counts):
                key = tuple(int(v) for v in row)
                self.signatures[key] = self.signatures.get(key, 0) + int(c)
        self.iterations += n

    def _work(self, key: tuple[int, ...]) -> list[LayerWork]:
        L = len(self.timings)
        ops, swaps = key[:L], key[L:]
        work = []
        for i, (t, m, sel) in enumerate(zip(self.timings, self.mapping.layers, self.selections)):
            if sel == "sgs-row":
                n_ops, op = ops[i], t.row_write
            elif sel == "dense":
                # every row; row blocks program in parallel, rows of a block one after another
                n_ops, op = min(self.hw.xbar.rows, m.rows), t.row_write
            else:   # sgs-element: one weight; topk: one operation per touched row
                n_ops, op = ops[i], t.cell_write
            work.append(LayerWork(timing=t, rows=m.rows, write_ops=n_ops, write_op_cycles=op,
                                  swaps=swaps[i]))
        return work

    def time_signature(self, key: tuple[int, ...]) -> IterationResult:
        if key not in self._cache:
            self._cache[key] = simulate_iteration(self._work(key), self.reprogram_cycles,
                                                  self.fine)
        return self._cache[key]

    def report(self) -> dict:
        """The report's ``cycles`` section (and ``seconds``)."""
        names = [m.name for m in self.mapping.layers]
        start = time.perf_counter()
        total = 0
        by_layer_phase = {n: dict.fromkeys(PHASES, 0) for n in names}
        for key, count in sorted(self.signatures.items()):
            res = self.time_signature(key)
            total += count * res.cycles
            for n, busy in zip(names, res.busy):
                for ph, c in busy.items():
                    by_layer_phase[n][ph] += count * c
        by_phase = {ph: sum(v[ph] for v in by_layer_phase.values()) for ph in PHASES}
        if not self.mapping.multiplexed:
            by_phase.pop("reprogram")
            for v in by_layer_phase.values():
                v.pop("reprogram")
        T = max(1, self.iterations)
        events = sum(r.events for r in self._cache.values())
        self.wall_s = time.perf_counter() - start
        return {
            "total": total,
            "per_iteration": total / T,
            "by_phase": by_phase,
            "by_layer": {n: sum(v.values()) for n, v in by_layer_phase.items()},
            "by_layer_phase": by_layer_phase,
            "distinct_signatures": len(self.signatures),
            "mode": "fine" if self.fine else "fast",
            "events": events,
            "clock_hz": self.hw.clock.frequency_hz,
        }

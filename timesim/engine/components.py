"""simpy components of the chip (one class per component, ``env`` first).

Time is integer cycles. One event per operation: a wave's transfer stage or computation, a
gradient row (fine mode) or all of a layer's rows, an ARS pass. Statistics are numpy arrays of
fixed size; nothing grows with the number of iterations.

Shared, chip-wide resources that processes queue on (``Chip``): the global buffer, the
interconnect root, the DRAM interface, the weight-gradient units, the attention units and
(``writes``) the arrays that may be programmed at once. Per layer (``Crossbars``): the layer's
arrays with their DACs, ADCs and shift-add, one capacity-1 resource (an MVM pass, a write and
an ARS pass never overlap on the same arrays, and forward and backward share the ADCs).
"""

from __future__ import annotations

import numpy as np
import simpy

from .costs import Transfer

PHASES = ("forward", "backward", "gradient", "select", "write", "ars", "reprogram")
PH = {p: i for i, p in enumerate(PHASES)}


class Spans:
    """First start and last end of each (layer, phase) in one iteration (its span), and the
    intervals in which the phase's unit of the layer was working (its busy time: a span also
    holds the waits on other units and layers)."""

    def __init__(self, layers: int):
        self.start = np.full((layers, len(PHASES)), np.iinfo(np.int64).max, dtype=np.int64)
        self.end = np.full((layers, len(PHASES)), -1, dtype=np.int64)
        # one interval per wave, CE pass, ARS pass: bounded by the iteration's work, not by
        # the number of iterations
        self.work: list[list[tuple[int, int, int]]] = [[] for _ in PHASES]

    def busy(self, layer: int, phase: str, start: int, end: int) -> None:
        """The layer's unit of ``phase`` worked from ``start`` to ``end``."""
        if end > start:
            self.work[PH[phase]].append((layer, start, end))

    def busy_cycles(self, layers: int) -> tuple[np.ndarray, np.ndarray]:
        """(per layer and phase, per phase on the chip): cycles in which the unit (any unit,
        chip-wide) of the phase was working; overlapping intervals count once."""
        per = np.zeros((layers, len(PHASES)), dtype=np.int64)
        chip = np.zeros(len(PHASES), dtype=np.int64)
        for j, iv in enumerate(self.work):
            if not iv:
                continue
            a = np.array(iv, dtype=np.int64)
            chip[j] = union_length(a[:, 1], a[:, 2])
            for i in np.unique(a[:, 0]):
                sel = a[:, 0] == i
                per[i, j] = union_length(a[sel, 1], a[sel, 2])
        return per, chip

    def mark(self, layer: int, phase: str, start: int, end: int) -> None:
        j = PH[phase]
        if start < self.start[layer, j]:
            self.start[layer, j] = start
        if end > self.end[layer, j]:
            self.end[layer, j] = end

    def lengths(self) -> np.ndarray:
        """Cycles from first start to last end; 0 where the phase did not happen."""
        return np.where(self.end >= 0, self.end - self.start, 0)


def union_length(starts: np.ndarray, ends: np.ndarray) -> int:
    """Cycles covered by the intervals [starts[i], ends[i]) (overlaps counted once)."""
    n = len(starts)
    if n == 0:
        return 0
    o = np.argsort(starts, kind="stable")
    s, e = np.asarray(starts)[o], np.asarray(ends)[o]
    reach = np.maximum.accumulate(e)
    first = np.ones(n, dtype=bool)
    first[1:] = s[1:] > reach[:-1]
    idx = np.flatnonzero(first)
    last = np.append(idx[1:] - 1, n - 1)
    return int((reach[last] - s[idx]).sum())


class Chip:
    """The chip-wide resources every layer shares."""

    def __init__(self, env: simpy.Environment, gradient_units: int, attention_units: int = 1):
        self.env = env
        self.global_buffer = simpy.Resource(env, capacity=1)
        self.interconnect = simpy.Resource(env, capacity=1)
        self.dram = simpy.Resource(env, capacity=1)
        self.gradient = simpy.Resource(env, capacity=gradient_units)
        self.attention = simpy.Resource(env, capacity=max(1, attention_units))

    def _hold(self, res: simpy.Resource, cycles: int):
        if cycles <= 0:
            return
        with res.request() as req:
            yield req
            yield self.env.timeout(cycles)

    def attend(self, layer: int, phase: str, cycles: int, spans: Spans):
        """``cycles`` of attention products for ``layer`` on one attention unit (busy time of
        the layer's ``phase``)."""
        if cycles <= 0:
            return
        with self.attention.request() as req:
            yield req
            t0 = int(self.env.now)
            yield self.env.timeout(cycles)
            spans.busy(layer, phase, t0, int(self.env.now))

    def load(self, t: Transfer):
        """Global buffer -> interconnect -> the layer's tile buffers (store and forward)."""
        yield from self._hold(self.dram, t.dram)
        yield from self._hold(self.global_buffer, t.global_buffer)
        yield from self._hold(self.interconnect, t.interconnect)
        if t.tile:
            yield self.env.timeout(t.tile)

    def store(self, t: Transfer):
        """The layer's tile buffers -> interconnect -> global buffer (-> DRAM)."""
        if t.tile:
            yield self.env.timeout(t.tile)
        yield from self._hold(self.interconnect, t.interconnect)
        yield from self._hold(self.global_buffer, t.global_buffer)
        yield from self._hold(self.dram, t.dram)


class Crossbars:
    """The crossbars holding one layer's weights (all copies), with their converters."""

    def __init__(self, env: simpy.Environment, index: int, spans: Spans):
        self.env = env
        self.index = index
        self.arrays = simpy.Resource(env, capacity=1)
        self.spans = spans

    def run(self, phase: str, cycles: int):
        """Occupy the arrays for ``cycles``."""
        if cycles <= 0:
            return
        with self.arrays.request() as req:
            yield req
            t0 = int(self.env.now)
            yield self.env.timeout(cycles)
            self.spans.mark(self.index, phase, t0, int(self.env.now))
            self.spans.busy(self.index, phase, t0, int(self.env.now))


class GradientUnit:
    """Weight-gradient units, shared by all layers: a layer's gradient holds one unit from
    its first wave to its last (the unit accumulates the batch's gradient of one layer)."""

    def __init__(self, env: simpy.Environment, chip: Chip, index: int, spans: Spans):
        self.env = env
        self.chip = chip
        self.index = index
        self.spans = spans

    def run(self, waves, ready):
        """``ready[w]``: the event that wave w's output error is known."""
        yield ready[0]
        with self.chip.gradient.request() as req:
            yield req
            t0 = int(self.env.now)
            for w, wave in enumerate(waves):
                yield ready[w]
                t1 = int(self.env.now)     # the unit works on the wave (waits excluded)
                yield from self.chip.load(wave.wg_in)
                if wave.wg_compute:
                    yield self.env.timeout(wave.wg_compute)
                yield from self.chip.store(wave.wg_store)
                self.spans.busy(self.index, "gradient", t1, int(self.env.now))
            self.spans.mark(self.index, "gradient", t0, int(self.env.now))


class ComparingElement:
    """Residual accumulator + comparator tree + tracker (sgs) or top-k unit (topk), fed the
    layer's gradient rows one by one once the batch's gradient is complete.

    ``fine``: one event per row through a bounded store; otherwise one event for all rows
    (identical cycles).
    """

    def __init__(self, env: simpy.Environment, index: int, rows: int, row_cycles: int,
                 drain: int, topk: int, spans: Spans, fine: bool):
        self.env = env
        self.index = index
        self.rows = rows
        self.row_cycles = row_cycles
        self.tail = drain + topk
        self.spans = spans
        self.fine = fine

    def run(self, after):
        yield after
        t0 = int(self.env.now)
        if self.fine and self.row_cycles:
            inbox = simpy.Store(self.env, capacity=2)
            self.env.process(self._rows(inbox))
            received = 0
            while received < self.rows:
                received += yield inbox.get()
        else:
            yield self.env.timeout(self.rows * self.row_cycles)
        if self.tail:
            yield self.env.timeout(self.tail)
        if int(self.env.now) > t0:
            self.spans.mark(self.index, "select", t0, int(self.env.now))
            self.spans.busy(self.index, "select", t0, int(self.env.now))

    def _rows(self, inbox: simpy.Store):
        for _ in range(self.rows):
            yield self.env.timeout(self.row_cycles)
            yield inbox.put(1)


class ArsController:
    """Aging-aware row swapping at the start of an iteration: per swap, read two rows and
    rewrite them (paper Sec. 4.2), one swap after another on the layer's arrays."""

    def __init__(self, crossbars: Crossbars, row_read: int, row_write: int):
        self.crossbars = crossbars
        self.per_swap = 2 * row_read + 2 * row_write

    def run(self, swaps: int, after):
        yield after
        yield from self.crossbars.run("ars", swaps * self.per_swap)

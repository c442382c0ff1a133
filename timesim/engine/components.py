"""simpy components of one layer of TIME (one class per component, ``env`` first).

Time is integer cycles. One event per operation: a layer's forward MVMs, a gradient row (fine
mode) or all of a layer's rows (fast mode), a write, an ARS pass. Statistics are numpy-free
integers per component; nothing grows with the number of iterations.
"""

from __future__ import annotations

import simpy

PHASES = ("forward", "backward", "gradient", "select", "write", "ars", "reprogram")


class Crossbars:
    """The crossbars holding one layer's weights: forward and backward MVMs, writes, ARS.

    A capacity-1 resource: an MVM pass, a write and an ARS pass never overlap on the same arrays.
    """

    def __init__(self, env: simpy.Environment, name: str, busy: dict[str, int]):
        self.env = env
        self.name = name
        self.arrays = simpy.Resource(env, capacity=1)
        self.busy = busy

    def run(self, phase: str, cycles: int, after=()):
        """Occupy the arrays for ``cycles`` once every event in ``after`` has happened."""
        for ev in after:
            yield ev
        if cycles <= 0:
            return
        with self.arrays.request() as req:
            yield req
            yield self.env.timeout(cycles)
            self.busy[phase] += cycles


class ComparingElement:
    """Comparator tree + global tracker (sgs), or a top-k unit (topk), fed row by row.

    Rows arrive on a bounded store; each is compared while the next row is being produced
    (the gradient row time already covers the tree's per-row passes, see costs.py), so the
    selection is known ``drain`` cycles after the last row, or ``topk`` cycles after it.
    """

    def __init__(self, env: simpy.Environment, rows: int, drain: int, topk: int,
                 busy: dict[str, int]):
        self.env = env
        self.rows = rows
        self.drain = drain
        self.topk = topk
        self.busy = busy
        self.inbox = simpy.Store(env, capacity=2)
        self.done = env.event()
        env.process(self._run())

    def _run(self):
        received = 0
        while received < self.rows:
            received += yield self.inbox.get()      # items are row counts
        tail = self.drain + self.topk
        if tail:
            yield self.env.timeout(tail)
            self.busy["select"] += tail
        self.done.succeed()


class GradientUnit:
    """Row-serial weight-gradient output: one row per step, all columns in parallel.

    ``fine``: one event per row into the CE's bounded store. Otherwise one event for the
    whole matrix, then the CE learns all rows at once: identical cycle counts, fewer events.
    """

    def __init__(self, env: simpy.Environment, rows: int, row_cycles: int,
                 ce: ComparingElement, busy: dict[str, int], fine: bool):
        self.env = env
        self.rows = rows
        self.row_cycles = row_cycles
        self.ce = ce
        self.busy = busy
        self.fine = fine

    def run(self, after):
        yield after
        if self.fine:
            for _ in range(self.rows):
                yield self.env.timeout(self.row_cycles)
                self.busy["gradient"] += self.row_cycles
                yield self.ce.inbox.put(1)
        else:
            total = self.rows * self.row_cycles
            yield self.env.timeout(total)
            self.busy["gradient"] += total
            yield self.ce.inbox.put(self.rows)


class WriteDriver:
    """Programs the selected rows or cells once the selection is known and the arrays are free.

    ``ops`` write operations of ``op_cycles`` each, one after another (fine mode: one event per
    operation, fast mode: one event for all of them).
    """

    def __init__(self, env: simpy.Environment, crossbars: Crossbars, fine: bool):
        self.env = env
        self.crossbars = crossbars
        self.fine = fine
        self.start = -1                 # cycle at which programming could begin

    def run(self, ops: int, op_cycles: int, after):
        for ev in after:
            yield ev
        with self.crossbars.arrays.request() as req:
            yield req
            self.start = int(self.env.now)
            if ops <= 0 or op_cycles <= 0:
                return
            if self.fine:
                for _ in range(ops):
                    yield self.env.timeout(op_cycles)
            else:
                yield self.env.timeout(ops * op_cycles)
            self.crossbars.busy["write"] += ops * op_cycles


class ArsController:
    """Aging-aware row swapping at the start of an iteration: per swap, read two rows and
    rewrite them (paper Sec. 4.2), one swap after another on the layer's arrays."""

    def __init__(self, env: simpy.Environment, crossbars: Crossbars, row_read: int,
                 row_write: int):
        self.env = env
        self.crossbars = crossbars
        self.per_swap = 2 * row_read + 2 * row_write

    def run(self, swaps: int, after=()):
        yield from self.crossbars.run("ars", swaps * self.per_swap, after)

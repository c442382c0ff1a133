"""One training iteration on TIME as a simpy process network (DESIGN §1, paper Sec. 4).

Order and overlap:
1. reprogramming of time-multiplexed crossbars (only when the network does not fit), then
   ARS on every layer whose controller swaps this iteration (start of the iteration, Sec. 4);
2. forward MVMs layer by layer (layer l waits for layer l−1 and for its own ARS);
3. backward MVMs in reverse (layer l propagates the error to layer l−1; layer 0 does not);
4. each layer's gradient rows stream out as soon as its output error is known, overlapping the
   backward pass of the earlier layers; its CE selects while the rows stream;
5. each layer writes once its selection is known and its crossbars are free (its backward MVMs
   are done). The iteration ends when the last write ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from .components import (
    PHASES,
    ArsController,
    ComparingElement,
    Crossbars,
    GradientUnit,
    WriteDriver,
)
from .costs import LayerTiming


@dataclass(frozen=True)
class LayerWork:
    """What one layer does in one iteration: timing plus this iteration's write signature."""

    timing: LayerTiming
    rows: int
    write_ops: int          # rows (or cells) programmed one after another
    write_op_cycles: int
    swaps: int


@dataclass(frozen=True)
class IterationResult:
    cycles: int                              # makespan of the iteration
    busy: tuple[dict[str, int], ...]         # per layer: cycles each phase kept its unit busy
    events: int                              # simpy events scheduled
    write_start: tuple[int, ...]             # per layer: cycle its write could begin


def simulate_iteration(layers: list[LayerWork], reprogram_cycles: int = 0,
                       fine: bool = False) -> IterationResult:
    env = simpy.Environment()
    busy = [dict.fromkeys(PHASES, 0) for _ in layers]
    xbars = [Crossbars(env, f"layer{i}", busy[i]) for i in range(len(layers))]
    start = env.event()
    if reprogram_cycles:
        def reprogram():
            yield env.timeout(reprogram_cycles)
            busy[0]["reprogram"] += reprogram_cycles
            start.succeed()
        env.process(reprogram())
    else:
        start.succeed()

    ars_done = [env.process(ArsController(env, xb, w.timing.row_read, w.timing.row_write)
                            .run(w.swaps, (start,)))
                for xb, w in zip(xbars, layers)]
    fwd = []
    prev = start
    for i, (xb, w) in enumerate(zip(xbars, layers)):
        ev = env.process(xb.run("forward", w.timing.vectors * w.timing.mvm,
                                (prev, ars_done[i])))
        fwd.append(ev)
        prev = ev
    delta_ready = fwd[-1]                       # the loss gives the last layer's error
    writes = []
    drivers = []
    for i in range(len(layers) - 1, -1, -1):
        w, xb = layers[i], xbars[i]
        ce = ComparingElement(env, w.rows, w.timing.select_drain, w.timing.topk_select, busy[i])
        gu = GradientUnit(env, w.rows, w.timing.grad_row, ce, busy[i], fine)
        env.process(gu.run(delta_ready))
        if i > 0:
            bwd = env.process(xb.run("backward", w.timing.vectors * w.timing.mvm,
                                     (delta_ready,)))
        else:
            bwd = delta_ready
        driver = WriteDriver(env, xb, fine)
        drivers.append(driver)
        writes.append(env.process(driver.run(w.write_ops, w.write_op_cycles, (ce.done, bwd))))
        delta_ready = bwd
    done = simpy.AllOf(env, writes)
    env.run(until=done)
    # simpy numbers every scheduled event from one counter; its next value is the event count
    events = next(env._eid)
    starts = tuple(d.start for d in reversed(drivers))
    return IterationResult(cycles=int(env.now), busy=tuple(busy), events=events,
                           write_start=starts)

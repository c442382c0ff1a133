"""One training iteration on the chip as a simpy process network (DESIGN §1, paper Sec. 4).

The batch moves in ``engine.waves`` waves. Order and overlap:
1. reprogramming of time-multiplexed crossbars (only when the network does not fit), then
   ARS on every layer whose controller swaps this iteration (start of the iteration, Sec. 4);
2. forward, layer by layer: a wave is loaded from the global buffer over the interconnect into
   the layer's tile buffers, computed on the layer's crossbars (copies in parallel), activated,
   pooled and stored back (an attention module's out_proj first has the wave's attention
   products, scores and context, computed on a shared attention unit, and in the backward pass
   their gradients after its own MVM). ``engine.pipeline: none`` (NeuroSim V2.1's
   layer-by-layer mode): a layer starts once the previous layer finished every wave;
   ``layer`` (PipeLayer, ISAAC): a layer starts a wave as soon as the previous layer stored it,
   through a bounded buffer of two waves between layers;
3. backward (activation gradient) in reverse order, the same way, through Wᵀ; layer 0 does not
   propagate an error;
4. weight gradient, per wave, on a shared weight-gradient unit, as soon as the layer's output
   error of that wave is known (``gradient.storage: sram``), or, with ``dram``, after the whole
   backward pass (NeuroSim V2.1 brings activations and errors back from DRAM); with ``dram``
   every wave's partial gradient goes to DRAM and back;
5. selection: the layer's gradient rows stream through the residual accumulator and the CE;
6. writes (``schedule_writes``): once a layer's selection is known and its crossbars are free,
   its arrays are programmed, at most ``write.parallel_arrays`` chip-wide at a time. Writes are
   the last thing a layer does and block nothing else in the iteration, so steps 1-5 are
   simulated once per distinct vector of ARS swaps and the writes are scheduled after.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import simpy

from .components import (
    PHASES,
    ArsController,
    Chip,
    ComparingElement,
    Crossbars,
    GradientUnit,
    Spans,
)
from .costs import LayerTiming

WRITE = PHASES.index("write")


@dataclass(frozen=True)
class LayerWork:
    """What one layer does in one iteration: timing plus this iteration's ARS swaps."""

    timing: LayerTiming
    swaps: int


@dataclass(frozen=True)
class IterationResult:
    cycles: int                      # end of everything but the writes
    spans: np.ndarray                # (layers, phases) cycles from first start to last end
    start: np.ndarray                # (layers, phases) first start (int64 max: did not happen)
    end: np.ndarray                  # (layers, phases) last end (-1: did not happen)
    busy: np.ndarray                 # (layers, phases) cycles the phase's unit worked
    chip_busy: np.ndarray            # (phases,) cycles some unit of the phase worked
    events: int                      # simpy events scheduled
    write_ready: tuple[int, ...]     # per layer: cycle its writes may begin


def simulate_iteration(layers: Sequence[LayerWork], reprogram_cycles: int = 0,
                       fine: bool = False, pipeline: str = "none", gradient_units: int = 1,
                       storage: str = "sram", attention_units: int = 1) -> IterationResult:
    env = simpy.Environment()
    L = len(layers)
    spans = Spans(L)
    chip = Chip(env, gradient_units, attention_units)
    xbars = [Crossbars(env, i, spans) for i in range(L)]
    W = len(layers[0].timing.waves)
    cap = 2 if pipeline == "layer" else W
    start = env.event()

    def reprogram():
        yield env.timeout(reprogram_cycles)
        spans.mark(0, "reprogram", 0, int(env.now))
        spans.busy(0, "reprogram", 0, int(env.now))
        start.succeed()

    if reprogram_cycles:
        env.process(reprogram())
    else:
        start.succeed()
    ars_done = [env.process(ArsController(xb, w.timing.row_read, w.timing.row_write)
                            .run(w.swaps, start)) for xb, w in zip(xbars, layers)]

    def stage(i: int, phase: str, inbox, outbox, after, waves, events=None):
        """Layer i's forward or backward: take each wave from ``inbox`` (all of them first
        without pipelining), load, compute, store, hand the wave on."""
        yield after
        if pipeline != "layer" and inbox is not None:
            for _ in range(W):
                yield inbox.get()
        for w, wave in enumerate(waves):
            if pipeline == "layer" and inbox is not None:
                yield inbox.get()
            t0 = int(env.now)
            lin, comp, lout, digital = wave
            yield from chip.load(lin)
            if phase == "forward":          # the attention products feed the out_proj
                yield from chip.attend(i, phase, digital, spans)
            yield from xbars[i].run(phase, comp)
            if phase == "backward":         # ... and take its error back to the in_proj
                yield from chip.attend(i, phase, digital, spans)
            yield from chip.store(lout)
            if outbox is not None:          # a full inter-layer buffer holds the layer up
                yield outbox.put(w)
            spans.mark(i, phase, t0, int(env.now))
            if events is not None:
                events[w].succeed()

    # forward: store f[i] feeds layer i (none for layer 0)
    fstore = [simpy.Store(env, capacity=cap) for _ in range(L)]
    # error of wave w at the output of layer i is known: err[i][w]
    err = [[env.event() for _ in range(W)] for _ in range(L)]
    bstore = [simpy.Store(env, capacity=cap) for _ in range(L)]
    fwd_done = []
    for i, w in enumerate(layers):
        waves = [(x.fw_in, x.fw_compute, x.fw_out, x.fw_digital) for x in w.timing.waves]
        last = i == L - 1
        outbox = (bstore[i] if i > 0 else None) if last else fstore[i + 1]
        fwd_done.append(env.process(stage(
            i, "forward", fstore[i] if i > 0 else None, outbox, ars_done[i], waves,
            err[i] if last else None)))
    bwd_done = [None] * L
    for i in range(L - 1, 0, -1):
        waves = [(x.bw_in, x.bw_compute, x.bw_out, x.bw_digital)
                 for x in layers[i].timing.waves]
        bwd_done[i] = env.process(stage(
            i, "backward", bstore[i], bstore[i - 1] if i > 1 else None, ars_done[i], waves,
            err[i - 1]))
    everything_back = simpy.AllOf(env, [fwd_done[-1]] + [b for b in bwd_done if b is not None])

    def gradient(i: int):
        if storage == "dram":
            yield everything_back
        yield from GradientUnit(env, chip, i, spans).run(layers[i].timing.waves, err[i])

    ready = []
    for i, w in enumerate(layers):
        t = w.timing
        grad = env.process(gradient(i))
        ce = ComparingElement(env, i, t.rows, t.select_row, t.select_drain, t.topk_select,
                              spans, fine)
        sel = env.process(ce.run(grad))
        free = bwd_done[i] if bwd_done[i] is not None else fwd_done[i]
        ready.append(simpy.AllOf(env, [sel, free]))
    write_ready = [0] * L

    def watch(i: int, ev):
        yield ev
        write_ready[i] = int(env.now)

    for i, ev in enumerate(ready):
        env.process(watch(i, ev))
    env.run(until=simpy.AllOf(env, ready))
    # simpy numbers every scheduled event from one counter; its next value is the event count
    events = next(env._eid)
    busy, chip_busy = spans.busy_cycles(L)
    return IterationResult(cycles=int(env.now), spans=spans.lengths(), start=spans.start,
                           end=spans.end, busy=busy, chip_busy=chip_busy, events=events,
                           write_ready=tuple(write_ready))


def schedule_writes(ready: Sequence[int], jobs: Sequence[int], durations: Sequence[int],
                    parallel: int, intervals: list | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """List-schedule each layer's ``jobs[l]`` array writes of ``durations[l]`` cycles, released
    at ``ready[l]``, on ``parallel`` write slots, first come first served (ties: lower layer
    first): what a simpy Resource of that capacity does (``simulate_writes``). Returns per layer
    (first start, last end); a layer with nothing to write has start = end = ready.
    ``intervals``: gets (layer, start, end) of the layer's array writes (busy time)."""
    L = len(ready)
    start = np.array(ready, dtype=np.int64)
    end = np.array(ready, dtype=np.int64)
    slots = [0] * parallel
    for l in sorted(range(L), key=lambda l: (ready[l], l)):
        n, d, r = int(jobs[l]), int(durations[l]), int(ready[l])
        if n <= 0 or d <= 0:
            continue
        first = None
        last = r
        if n >= parallel and all(s <= r for s in slots):
            # all slots free at release: full rounds of ``parallel`` jobs back to back
            rounds, rest = divmod(n, parallel)
            first = r
            if rest:
                slots = [r + (rounds + 1) * d] * rest + [r + rounds * d] * (parallel - rest)
            else:
                slots = [r + rounds * d] * parallel
            heapq.heapify(slots)
            last = max(slots)
            if intervals is not None:          # back to back: one busy interval
                intervals.append((l, r, last))
        else:
            for _ in range(n):
                s = max(heapq.heappop(slots), r)
                heapq.heappush(slots, s + d)
                first = s if first is None else first
                last = max(last, s + d)
                if intervals is not None:
                    intervals.append((l, s, s + d))
        start[l], end[l] = first, last
    return start, end


def simulate_writes(ready: Sequence[int], jobs: Sequence[int], ops: Sequence[int],
                    durations: Sequence[int], parallel: int, intervals: list | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The same schedule as ``schedule_writes`` in simpy, one event per write operation (a
    job's ``durations[l]`` cycles split over its ``ops[l]`` operations): each array write
    requests one of ``parallel`` slots of a chip-wide Resource (fine mode); ``intervals`` as
    there."""
    env = simpy.Environment()
    slots = simpy.Resource(env, capacity=parallel)
    L = len(ready)
    start = np.array(ready, dtype=np.int64)
    end = np.array(ready, dtype=np.int64)
    first = [None] * L

    def job(l: int):
        yield env.timeout(int(ready[l]))
        with slots.request() as req:
            yield req
            t0 = int(env.now)
            if first[l] is None:
                first[l] = t0
            n, d = max(1, int(ops[l])), int(durations[l])
            for q in range(n):
                yield env.timeout(d // n + (d % n if q == n - 1 else 0))
            end[l] = max(end[l], int(env.now))
            if intervals is not None:
                intervals.append((l, t0, int(env.now)))

    for l in sorted(range(L), key=lambda l: (ready[l], l)):
        if jobs[l] > 0 and durations[l] > 0:
            for _ in range(int(jobs[l])):
                env.process(job(l))
    env.run()
    for l in range(L):
        if first[l] is not None:
            start[l] = first[l]
    return start, end

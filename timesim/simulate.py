"""The policy path: trace chunks -> policy kernels -> write counts -> lifetime -> report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from .config import HwConfig
from .energy import action_counts, energy_report, write_actions_csv
from .engine import Engine
from .kernels.convert import to_float32
from .policies import LayerPolicy
from .report import build_report, write_run
from .trace import open_trace

log = logging.getLogger(__name__)

HISTORY_POINTS = 1000


def simulate(hw: HwConfig, trace, out=None,
             progress: Callable[[int], None] | None = None, fine: bool = False) -> dict:
    """Simulate every iteration of ``trace`` on chip ``hw``; write the run folder if ``out``.

    ``progress(n)`` is called with the number of iterations finished after each chunk.
    ``fine`` times every gradient row and write operation as its own event (slow; for checks).
    """
    trace = open_trace(trace)
    meta = trace.meta
    start = time.perf_counter()
    policies = [LayerPolicy(layer, hw) for layer in meta.layers]
    engine = Engine(hw, meta, [p.selection for p in policies], [p.k for p in policies],
                    fine=fine)
    ops = np.empty((meta.chunk_iterations, len(policies)), dtype=np.int64)
    swaps = np.empty_like(ops)
    scratch = np.empty(0, dtype=np.float32)
    if meta.dtype != "float32":
        scratch = np.empty(meta.chunk_iterations * max(l.cells for l in meta.layers),
                           dtype=np.float32)
    step = max(1, meta.iterations // HISTORY_POINTS)
    hist_t: list[int] = []
    hist_max: list[list[int]] = []
    next_mark = step
    for chunk in trace.chunks():
        for policy in policies:
            arr = chunk.arrays[policy.layer.name]
            if meta.dtype == "float32" or policy.selection == "dense":
                g = arr
            else:
                g = to_float32(arr, meta.dtype, scratch[:arr.size].reshape(arr.shape))
            policy.process(g, chunk.t0)
        for j, policy in enumerate(policies):
            policy.write_signature(ops[:, j], swaps[:, j])
        engine.add(ops[:chunk.n], swaps[:chunk.n])
        done = chunk.t0 + chunk.n
        if done >= next_mark or done == meta.iterations:
            hist_t.append(done)
            hist_max.append([p.max_writes for p in policies])
            next_mark = (done // step + 1) * step
        if progress is not None:
            progress(done)
    for policy in policies:
        policy.finish()
    policy_s = time.perf_counter() - start
    cycles = engine.report()
    counts = action_counts(engine, policies, meta.iterations)
    energy = energy_report(engine, counts)
    report = build_report(hw, trace, policies, meta.iterations, time.perf_counter() - start)
    report["cycles"] = cycles
    report["seconds"] = cycles["total"] / hw.clock.frequency_hz
    report["energy_j"] = energy
    report["mapping"] = engine.mapping.to_dict()
    wall = time.perf_counter() - start
    report["run"] = {"created": report.pop("created"), "wall_s": wall,
                     "policy_wall_s": policy_s, "engine_wall_s": wall - policy_s,
                     "engine_events_per_s": (cycles["events"] / engine.wall_s
                                             if engine.wall_s > 0 else None)}
    report.pop("wall_s")
    if out is not None:
        write_run(out, report, policies, (hist_t, hist_max),
                  lambda path: write_actions_csv(path, engine, counts))
    log.info("simulated %d iterations of %d layers in %.2f s", meta.iterations,
             len(policies), report["run"]["wall_s"])
    return report

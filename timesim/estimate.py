"""Timing without gradients: cycles and energy of a policy on a timing-only manifest.

Without gradients the write signature is known for dense, sgs-row and sgs-element (every
iteration writes all rows, one row, one weight per layer); for topk each iteration is taken to
touch min(k, rows) rows, and every ARS event to swap all h pairs of every row block: both are
upper bounds, which the report states under ``estimate``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ._version import __version__
from .area import area_report
from .config import HwConfig
from .energy import action_counts, energy_report, write_actions_csv
from .engine import Engine
from .policies import effective_selection, topk_count
from .report import left_digital
from .trace.format import TraceMeta


@dataclasses.dataclass
class _Work:
    """Stand-in for LayerPolicy's counters in ``energy.action_counts``."""

    selection: str
    k: int
    policy_cell_writes: int
    row_writes: int
    swaps: int
    weight_pulses: int = 0


def _topk_groups(k: int, rows: int, cpw: int, drivers: int) -> int:
    """Groups of cells programmed one after another when k weights of ``cpw`` cells fill
    ``rows`` rows as evenly as possible (``drivers`` cells at a time in a row)."""
    q, r = divmod(k, rows)
    return r * -(-(q + 1) * cpw // drivers) + (rows - r) * -(-q * cpw // drivers)


def estimate(hw: HwConfig, meta: TraceMeta, iterations: int | None = None,
             actions_csv: Path | None = None) -> dict:
    start = time.perf_counter()
    if hw.write.pulses == "delta":
        from .errors import ConfigError

        raise ConfigError(f"write.pulses: delta counts pulses from the gradients, and "
                          f"{meta.source or 'this manifest'} is timing only (no gradients); "
                          f"use write.pulses=fixed")
    T = iterations or meta.iterations
    c = hw.controller
    sels = [effective_selection(c.selection, l.rows, c.rct) for l in meta.layers]
    ks = [topk_count(c.topk_density, l.cells) if s == "topk" else 0
          for s, l in zip(sels, meta.layers)]
    engine = Engine(hw, meta, sels, ks)
    ops = np.array([[l.rows if s == "dense" else min(k, l.rows) if s == "topk" else 1
                     for s, k, l in zip(sels, ks, meta.layers)]], dtype=np.int64)
    events = (T - 1) // c.interval if c.wear_leveling != "none" else 0
    swaps_per_event = []
    for s, l in zip(sels, meta.layers):
        pairs = 0
        if s != "dense":      # dense never swaps (all counters stay equal)
            for start_row in range(0, l.rows, hw.xbar.rows):
                x = min(hw.xbar.rows, l.rows - start_row)
                pairs += min(c.rows // 2, x // 2)
        swaps_per_event.append(pairs)
    # topk: its k weights spread evenly over the touched rows, each row written in groups of
    # at most write.drivers_per_xbar cells (the kernels' pulse slots); -1: fixed write time
    cpw = engine.mapping.layers[0].cells_per_weight if meta.layers else 1
    slots = np.array([[_topk_groups(k, int(o), cpw, hw.write.drivers_per_xbar) if s == "topk"
                       else -1 for s, k, o in zip(sels, ks, ops[0])]], dtype=np.int64)
    quiet = np.zeros_like(ops)
    engine.add(np.repeat(ops, T - events, axis=0), np.repeat(quiet, T - events, axis=0),
               np.repeat(slots, T - events, axis=0))
    if events:
        engine.add(np.repeat(ops, events, axis=0),
                   np.repeat(np.array([swaps_per_event], dtype=np.int64), events, axis=0),
                   np.repeat(slots, events, axis=0))
    work = []
    for s, k, l, sw in zip(sels, ks, meta.layers, swaps_per_event):
        cells = {"dense": l.cells, "sgs-row": l.cols, "sgs-element": 1, "topk": k}[s]
        rows = l.rows if s == "dense" else min(k, l.rows) if s == "topk" else 1
        work.append(_Work(s, k, T * cells, T * rows, events * sw))
    cycles = engine.report()
    counts = action_counts(engine, work, T)
    if actions_csv is not None:
        write_actions_csv(Path(actions_csv), engine, counts)
    return {
        "timesim_version": __version__,
        "hwconfig": hw.to_dict(),
        "trace": {"path": meta.source, "model": meta.model, "iterations": T,
                  "layers": [{"name": l.name, "kind": l.kind, "rows": l.rows, "cols": l.cols}
                             for l in meta.layers]},
        "policy": {"selection": c.selection, "rct": c.rct, "topk_density": c.topk_density,
                   "wear_leveling": c.wear_leveling, "interval": c.interval, "rows": c.rows,
                   "by_layer": {l.name: s for l, s in zip(meta.layers, sels)}},
        "iterations": T,
        "cycles": cycles,
        "seconds": cycles["total"] / hw.clock.frequency_hz,
        "energy_j": energy_report(engine, counts),
        "area_mm2": area_report(hw, engine.mapping.floorplan, engine.mapping.batch_size,
                                engine.mapping.write_parallel, engine.mapping.attention),
        "mapping": engine.mapping.to_dict(),
        "ars": {"swaps": sum(w.swaps for w in work),
                "rewrite_cells": sum(w.swaps * 2 * l.cols for w, l in zip(work, meta.layers))},
        "estimate": {
            "timing_only": True,
            "assumptions": "no gradients: sgs/dense signatures exact; topk touches min(k, rows) "
                           "rows per iteration; every ARS event swaps all h pairs of every "
                           "row block (upper bounds); no write counts or lifetime",
            "ars_events": events,
        },
        "run": {"wall_s": time.perf_counter() - start,
                "row_writes_per_iteration": {l.name: math.ceil(w.row_writes / T)
                                             for l, w in zip(meta.layers, work)}},
        **left_digital(meta, hw),
    }

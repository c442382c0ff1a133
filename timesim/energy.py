"""Energy = Σ action counts × per-action energy (what exists / what it costs / what happened).

Action counts come from the mapping (per-iteration MVM work) and from the policy kernels'
counters (cells written, write operations, ARS swaps); per-action energies from
``engine.costs.CostTable``. Everything is written to ``actions.csv`` so any joule can be checked
by hand. Leakage is not modelled (see docs/architecture.md).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .engine import Engine
from .engine.costs import ACTIONS, log2_ceil
from .policies import LayerPolicy

COMPONENTS = ("crossbar", "dac", "adc", "gradient", "ce", "write", "counters", "ars", "buffer",
              "multiplex")


def action_counts(engine: Engine, policies: Sequence[LayerPolicy], T: int
                  ) -> dict[str, dict[tuple[str, str], int]]:
    """Per layer: {(component, action): count over the whole run}."""
    c = engine.costs
    S = c.slices_in
    ars_on = engine.hw.controller.wear_leveling != "none"
    out = {}
    for i, (m, p) in enumerate(zip(engine.mapping.layers, policies)):
        V, R, PC, RB, CT, n = m.vectors, m.rows, m.phys_cols, m.row_blocks, m.col_tiles, m.cells
        bwd = 1 if i > 0 else 0            # layer 0 does not propagate an error to the input
        a: dict[tuple[str, str], int] = {}
        a["crossbar", "cell_read"] = T * V * S * R * PC * (1 + bwd)
        a["dac", "conversion"] = T * V * S * (R * CT + bwd * PC * RB)
        a["adc", "conversion"] = T * V * S * (PC * RB + bwd * R * CT)
        a["gradient", "mac"] = T * n * V
        if p.selection in ("sgs-row", "sgs-element"):
            a["ce", "compare"] = T * n
        elif p.selection == "topk":
            a["ce", "compare"] = T * n * max(1, log2_ceil(p.k))
        else:
            a["ce", "compare"] = 0
        cells = p.policy_cell_writes * m.cells_per_weight
        a["write", "cell_pulse"] = cells
        a["write", "verify_read"] = cells * engine.hw.write.verify_reads
        a["counters", "update"] = (p.row_writes + 2 * p.swaps) if ars_on else 0
        # ARS rewrites are programming pulses: charged to the write drivers, so the write
        # component scales with the pulse energy whatever the wear levelling
        a["write", "ars_rewrite_pulse"] = p.swaps * 2 * PC
        a["ars", "cell_read"] = p.swaps * 2 * PC
        acc = c.acc_bytes * n if p.selection != "dense" else 0
        a["buffer", "read_byte"] = T * (acc + c.input_bytes * V * (R + bwd * m.cols))
        a["buffer", "write_byte"] = T * (acc + c.input_bytes * V * (m.cols + bwd * R))
        a["multiplex", "cell_pulse"] = 0
        out[m.name] = a
    if engine.mapping.multiplexed:
        # charged to the first layer: reprogramming serves the whole network
        out[engine.mapping.layers[0].name]["multiplex", "cell_pulse"] = (
            T * engine.reprogram_cells)
    return out


def action_latency(engine: Engine) -> dict[tuple[str, str], int]:
    c = engine.costs
    return {("crossbar", "cell_read"): c.read, ("gradient", "mac"): 1,
            ("dac", "conversion"): c.dac, ("adc", "conversion"): c.adc,
            ("ce", "compare"): c.compare, ("write", "cell_pulse"): c.pulse,
            ("write", "verify_read"): c.read, ("counters", "update"): 1,
            ("ars", "cell_read"): c.read, ("write", "ars_rewrite_pulse"): c.pulse,
            ("buffer", "read_byte"): 1, ("buffer", "write_byte"): 1,
            ("multiplex", "cell_pulse"): c.pulse}


def energy_report(engine: Engine, counts: dict[str, dict[tuple[str, str], int]]) -> dict:
    table = engine.costs.energy
    by_component = dict.fromkeys(COMPONENTS, 0.0)
    by_layer = {}
    for layer, a in counts.items():
        e_layer = 0.0
        for key, n in a.items():
            e = n * table[key]
            by_component[key[0]] += e
            e_layer += e
        by_layer[layer] = e_layer
    if not engine.mapping.multiplexed:
        by_component.pop("multiplex")
    overhead = sum(n * table[key] for a in counts.values() for key, n in a.items()
                   if key in (("ars", "cell_read"), ("write", "ars_rewrite_pulse"),
                              ("counters", "update")))
    return {"total": sum(by_component.values()), "by_component": by_component,
            "by_layer": by_layer, "ars_overhead": overhead}


def write_actions_csv(path: Path, engine: Engine,
                      counts: dict[str, dict[tuple[str, str], int]]) -> None:
    """actions.csv: component, action, count, energy_per_action_j, energy_j, latency_cycles."""
    totals: dict[tuple[str, str], int] = {}
    for a in counts.values():
        for key, n in a.items():
            totals[key] = totals.get(key, 0) + n
    lat = action_latency(engine)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["component", "action", "count", "energy_per_action_j", "energy_j",
                    "latency_cycles", "description"])
        for key in ACTIONS:
            if key not in totals:
                continue
            e = engine.costs.energy[key]
            w.writerow([key[0], key[1], totals[key], repr(e), repr(totals[key] * e), lat[key],
                        ACTIONS[key]])
    tmp.replace(path)

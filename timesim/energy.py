"""Energy = Σ action counts × per-action energy (what exists / what it costs / what happened).

Action counts come from the mapping (per-iteration MVM work and data movement) and from the
policy kernels' counters (cells written, write operations, ARS swaps); per-action energies from
``engine.costs.CostTable``. Every count belongs to one phase of one layer; everything is written
to ``actions.csv`` so any joule can be checked by hand. Leakage is not modelled (see
docs/architecture.md).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .engine import Engine
from .engine.components import PHASES
from .engine.costs import ACTIONS, log2_ceil
from .policies import LayerPolicy

COMPONENTS = ("crossbar", "dac", "adc", "accumulation", "activation", "pooling", "buffer",
              "global_buffer", "interconnect", "dram", "gradient", "attention", "ce", "write",
              "counters", "ars", "multiplex")

Key = tuple[str, str, str]          # (phase, component, action)


def action_counts(engine: Engine, policies: Sequence[LayerPolicy], T: int
                  ) -> dict[str, dict[Key, int]]:
    """Per layer: {(phase, component, action): count over the whole run}."""
    c = engine.costs
    hw = engine.hw
    ars_on = hw.controller.wear_leveling != "none"
    B = engine.mapping.batch_size
    out = {}
    for i, (m, p) in enumerate(zip(engine.mapping.layers, policies)):
        R, PC, n = m.rows, m.phys_cols, m.cells
        # what the layer does every iteration (CostTable.iteration_actions: the same volumes
        # its timing uses), then what the policy's counters say it wrote
        a: dict[Key, int] = {k: T * v for k, v in c.iteration_actions(m, i, B).items()}
        # paper Sec. 3.2: SGS compares each element once as its row streams out and tracks
        # the best of the rows (k²C·N + k²C); top-k costs O(n log₂ k) comparisons
        if p.selection in ("sgs-row", "sgs-element"):
            a["select", "ce", "compare"] = T * (n + R)
        elif p.selection == "topk":
            a["select", "ce", "compare"] = T * n * max(1, log2_ceil(p.k))
        if p.selection != "dense":       # residual accumulator: read, add, write back
            a["select", "buffer", "read_byte"] = T * c.acc_bytes * n
            a["select", "buffer", "write_byte"] = T * c.acc_bytes * n
        copies = m.programmed_copies(hw.write.copies, c.pe_grid(m))
        if hw.write.pulses == "delta":      # each cell of a written weight: ⌈|Δw| / step⌉
            pulses = p.weight_pulses * m.cells_per_weight * copies
        else:
            pulses = p.policy_cell_writes * m.cells_per_weight * c.pulses_per_cell * copies
        a["write", "write", "cell_pulse"] = pulses
        if hw.write.row_phase_energy_j > 0:
            # each written row segment of one crossbar runs every programming phase
            segments = p.row_writes * (m.col_tiles if p.selection in ("dense", "sgs-row")
                                       else 1)
            a["write", "write", "row_phase"] = segments * hw.write.phases * copies
        a["write", "write", "verify_read"] = pulses * hw.write.verify_reads
        a["write", "counters", "update"] = p.row_writes if ars_on else 0
        # ARS rewrites are programming pulses: charged to the write drivers, so the write
        # component scales with the pulse energy whatever the wear levelling; every copy swaps
        a["ars", "counters", "update"] = 2 * p.swaps if ars_on else 0
        a["ars", "write", "ars_rewrite_pulse"] = (p.swaps * 2 * PC * c.pulses_per_cell
                                                  * m.copies)
        a["ars", "ars", "cell_read"] = p.swaps * 2 * PC * m.copies
        out[m.name] = {k: v for k, v in a.items() if v}
    if engine.mapping.multiplexed:
        # charged to the first layer: reprogramming serves the whole network
        out[engine.mapping.layers[0].name]["reprogram", "multiplex", "cell_pulse"] = (
            T * engine.reprogram_cells)
    return out


def action_latency(engine: Engine) -> dict[tuple[str, str], int]:
    c = engine.costs
    return {("crossbar", "cell_read"): c.read, ("dac", "conversion"): c.dac,
            ("crossbar", "array_read"): c.read, ("accumulation", "adder_bit"): 0,
            ("buffer", "register_clock"): 0,
            ("interconnect", "chip_bit_side"): 0, ("interconnect", "tile_bit_side_novel"): 0,
            ("interconnect", "tile_bit_side_conventional"): 0,
            ("interconnect", "bus_bit_side"): 0,
            ("adc", "conversion"): c.adc, ("accumulation", "add"): c.add,
            ("activation", "op"): 1, ("pooling", "op"): 1,
            ("buffer", "read_byte"): 1, ("buffer", "write_byte"): 1,
            ("global_buffer", "read_byte"): 1, ("global_buffer", "write_byte"): 1,
            ("interconnect", "bit"): c.hop, ("dram", "bit"): 1,
            ("gradient", "mac"): 1, ("gradient", "accumulate"): 1, ("attention", "mac"): 1,
            ("ce", "compare"): c.compare,
            ("write", "cell_pulse"): c.pulse, ("write", "verify_read"): c.read,
            ("write", "row_phase"): c.pulse,
            ("counters", "update"): 1, ("ars", "cell_read"): c.read,
            ("write", "ars_rewrite_pulse"): c.pulse, ("multiplex", "cell_pulse"): c.pulse}


def energy_report(engine: Engine, counts: dict[str, dict[Key, int]]) -> dict:
    table = engine.costs.energy
    by_component = dict.fromkeys(COMPONENTS, 0.0)
    by_phase = dict.fromkeys(PHASES, 0.0)
    by_layer = {}
    by_layer_phase = {}
    for layer, a in counts.items():
        e_layer = 0.0
        per_phase = dict.fromkeys(PHASES, 0.0)
        for (phase, comp, action), n in a.items():
            e = n * table[comp, action]
            by_component[comp] += e
            by_phase[phase] += e
            per_phase[phase] += e
            e_layer += e
        by_layer[layer] = e_layer
        by_layer_phase[layer] = per_phase
    if not engine.mapping.attention:                 # no attention products timed
        by_component.pop("attention")
    if not engine.mapping.multiplexed:
        by_component.pop("multiplex")
        by_phase.pop("reprogram")
        for v in by_layer_phase.values():
            v.pop("reprogram")
    # what ARS costs: its swaps (reads, rewrites, counters) and the row counters it keeps
    overhead = sum(n * table[comp, action] for a in counts.values()
                   for (phase, comp, action), n in a.items()
                   if phase == "ars" or comp == "counters")
    return {"total": sum(by_component.values()), "by_component": by_component,
            "by_phase": by_phase, "by_layer": by_layer, "by_layer_phase": by_layer_phase,
            "ars_overhead": overhead}


def write_actions_csv(path: Path, engine: Engine, counts: dict[str, dict[Key, int]]) -> None:
    """actions.csv: phase, component, action, count, energy_per_action_j, energy_j,
    latency_cycles, description (one row per phase and action, summed over layers)."""
    totals: dict[Key, int] = {}
    for a in counts.values():
        for key, n in a.items():
            totals[key] = totals.get(key, 0) + n
    lat = action_latency(engine)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["phase", "component", "action", "count", "energy_per_action_j", "energy_j",
                    "latency_cycles", "description"])
        for phase in PHASES:
            for key in ACTIONS:
                n = totals.get((phase, *key))
                if not n:
                    continue
                e = engine.costs.energy[key]
                w.writerow([phase, key[0], key[1], n, repr(e), repr(n * e), lat[key],
                            ACTIONS[key]])
    tmp.replace(path)

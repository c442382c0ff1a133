"""What each action costs: the per-action table derived from the hwconfig (as in Accelergy).

Latencies are integer cycles (⌈seconds × clock⌉ per primitive); energies are joules per action.
Formulas and their sources are in docs/architecture.md; this module is the only place that turns
hwconfig numbers into per-action costs, so every reported number can be checked by hand against
``actions.csv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import HwConfig
from ..mapping import LayerMapping


def cycles(seconds: float, hz: float) -> int:
    """Whole cycles a primitive of ``seconds`` occupies (at least 1 if it takes any time)."""
    return math.ceil(seconds * hz - 1e-9) if seconds > 0 else 0


def log2_ceil(n: int) -> int:
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


# (component, action) -> what one action is
ACTIONS = {
    ("crossbar", "cell_read"): "one cell read during a forward/backward MVM input slice",
    ("gradient", "mac"): "one multiply-accumulate in the weight-gradient unit",
    ("dac", "conversion"): "one DAC conversion of one input slice on one line",
    ("adc", "conversion"): "one ADC conversion of one column (or row) output",
    ("ce", "compare"): "one magnitude comparison in the comparator tree or top-k unit",
    ("write", "cell_pulse"): "one programming pulse on one physical cell",
    ("write", "verify_read"): "one read-verify of one physical cell",
    ("counters", "update"): "one row write-counter increment",
    ("write", "ars_rewrite_pulse"): "one programming pulse rewriting a row swapped by ARS",
    ("ars", "cell_read"): "one cell read while swapping rows",
    ("buffer", "read_byte"): "one byte read from the on-chip buffer",
    ("buffer", "write_byte"): "one byte written to the on-chip buffer",
    ("multiplex", "cell_pulse"): "one pulse reprogramming a time-multiplexed crossbar",
}


@dataclass(frozen=True)
class LayerTiming:
    """Cycle counts of one layer's operations (see docs/architecture.md)."""

    mvm: int                 # one input vector through the layer (forward or backward)
    grad_row: int            # one gradient row out of the gradient unit, incl. CE and buffer
    select_drain: int        # CE pipeline drain after the last row (sgs) or 0
    topk_select: int         # top-k unit cycles for the whole layer (topk only)
    row_write: int           # program one row (all its cells, tiles in parallel)
    cell_write: int          # program one weight (its cells in one tile)
    row_read: int            # read one row out (ARS)
    vectors: int             # input vectors per iteration


class CostTable:
    """Per-action energies and per-layer latencies for one chip and one mapped network."""

    def __init__(self, hw: HwConfig):
        self.hw = hw
        f = hw.clock.frequency_hz
        self.f = f
        self.read = cycles(hw.xbar.read_latency_s, f)
        self.adc = cycles(hw.adc.latency_s, f)
        self.dac = cycles(hw.dac.latency_s, f)
        self.pulse = cycles(hw.write.pulse_latency_s, f)
        self.compare = max(1, cycles(hw.ce.compare_latency_s, f))
        self.slices_in = math.ceil(hw.dac.input_bits / hw.dac.bits)
        self.input_bytes = math.ceil(hw.dac.input_bits / 8)
        self.acc_bytes = math.ceil(hw.buffer.accumulator_bits / 8)
        x, w = hw.xbar, hw.write
        self.energy = {
            ("crossbar", "cell_read"): x.read_energy_j,
            ("gradient", "mac"): hw.gradient.mac_energy_j,
            ("dac", "conversion"): hw.dac.energy_j,
            ("adc", "conversion"): hw.adc.energy_j,
            ("ce", "compare"): hw.ce.compare_energy_j,
            ("write", "cell_pulse"): w.pulse_energy_j,
            ("write", "verify_read"): x.read_energy_j,
            ("counters", "update"): hw.ce.counter_energy_j,
            ("write", "ars_rewrite_pulse"): w.pulse_energy_j,
            ("ars", "cell_read"): x.read_energy_j,
            ("buffer", "read_byte"): hw.buffer.read_energy_j,
            ("buffer", "write_byte"): hw.buffer.write_energy_j,
            ("multiplex", "cell_pulse"): w.pulse_energy_j,
        }
        # one input slice: DAC drive, array read, then the columns sharing an ADC one by one
        self.slice_cycles = self.dac + self.read + hw.adc.cols_per_adc * self.adc
        self.row_write_group = w.phases * self.pulse
        self.verify = w.verify_reads * self.read

    def mvm_cycles(self, row_blocks: int) -> int:
        """One input vector: every input slice, then the adder tree over the row blocks."""
        return self.slices_in * self.slice_cycles + 1 + log2_ceil(row_blocks)

    def grad_row_cycles(self, m: LayerMapping) -> int:
        """One gradient row: all columns in parallel, each accumulating batch × positions
        products, ``gradient.lanes`` per cycle (NeuroSim V2.1's separate gradient arrays)."""
        return math.ceil(m.vectors / self.hw.gradient.lanes)

    def layer(self, m: LayerMapping, selection: str, k: int) -> LayerTiming:
        hw = self.hw
        n_cols = m.cols
        grad_mvm = self.grad_row_cycles(m)
        # the CE tree takes tree_width values per compare step; a wider row needs several passes
        ce_passes = math.ceil(n_cols / hw.ce.tree_width) * self.compare
        accumulates = selection != "dense"
        buffer_rw = (math.ceil(2 * n_cols * self.acc_bytes / hw.buffer.bytes_per_cycle)
                     if accumulates else 0)
        grad_row = max(grad_mvm, ce_passes if selection != "dense" else 0, buffer_rw)
        tree = log2_ceil(min(n_cols, hw.ce.tree_width)) + 1
        drain = tree * self.compare if selection in ("sgs-row", "sgs-element") else 0
        topk = 0
        if selection == "topk":
            topk = math.ceil(m.cells * max(1, log2_ceil(k)) / hw.ce.topk_units) * self.compare
        cells_in_tile = min(hw.xbar.cols, m.phys_cols)
        row_write = (math.ceil(cells_in_tile / hw.write.drivers_per_xbar) * self.row_write_group
                     + self.verify)
        cell_write = (math.ceil(m.cells_per_weight / hw.write.drivers_per_xbar)
                      * self.row_write_group + self.verify)
        row_read = self.read + hw.adc.cols_per_adc * self.adc
        return LayerTiming(mvm=self.mvm_cycles(m.row_blocks), grad_row=grad_row,
                           select_drain=drain, topk_select=topk, row_write=row_write,
                           cell_write=cell_write, row_read=row_read, vectors=m.vectors)

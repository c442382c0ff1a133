"""What each action costs: the per-action table derived from the hwconfig (as in Accelergy).

Latencies are integer cycles (⌈seconds × clock⌉ per primitive); energies are joules per action.
Formulas and their sources are in docs/architecture.md; this module is the only place that turns
hwconfig numbers into per-action costs and per-layer work, so every reported number can be
checked by hand against ``actions.csv``.

The chip is a hierarchy (NeuroSim V2.1, ISAAC): crossbars with their DACs, ADCs and shift-add
form tiles of ``chip.xbars_per_tile`` crossbars; each tile has a buffer, activation and pooling
units and a port on the inter-tile network; the network's root is the global buffer, next to the
weight-gradient unit(s) and the DRAM interface. A layer's copies occupy whole tiles
(``LayerMapping.chip_tiles``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..config import HwConfig
from ..errors import ConfigError
from ..floorplan import Floorplan
from ..mapping import LayerMapping
from .netchip import NetworkChip


def cycles(seconds: float, hz: float) -> int:
    """Whole cycles a primitive of ``seconds`` occupies (at least 1 if it takes any time)."""
    return math.ceil(seconds * hz - 1e-9) if seconds > 0 else 0


def log2_ceil(n: int) -> int:
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def part(before: int, n: int, per: int) -> int:
    """Whole cycles that n more units of a stream take at ``per`` units a cycle, after
    ``before`` units: the difference of cumulative whole cycles, so that a stream cut into
    pieces costs what it costs in one."""
    return cdiv(before + n, per) - cdiv(before, per)


# (component, action) -> what one action is
ACTIONS = {
    ("crossbar", "cell_read"): "one cell read whose input bit is 1 (forward/backward MVM slice)",
    ("crossbar", "array_read"): "one crossbar read of one input slice: its switch matrices, "
                                "decoders and multiplexers (chip.floorplan=network)",
    ("dac", "conversion"): "one DAC conversion of one input slice on one line",
    ("adc", "conversion"): "one ADC conversion of one column (or row) output",
    ("accumulation", "add"): "one shift-add or partial-sum addition",
    ("accumulation", "adder_bit"): "one full-adder bit of a PE, tile or chip adder tree "
                                   "(chip.floorplan=network)",
    ("activation", "op"): "one output activated (ReLU)",
    ("pooling", "op"): "one input compared in max-pooling",
    ("buffer", "read_byte"): "one byte read from a tile buffer",
    ("buffer", "write_byte"): "one byte written to a tile buffer",
    ("buffer", "register_clock"): "one clock of one bit of a PE's input or output registers "
                                  "(chip.floorplan=network)",
    ("global_buffer", "read_byte"): "one byte read from the global buffer",
    ("global_buffer", "write_byte"): "one byte written to the global buffer",
    ("interconnect", "bit"): "one bit moved between the global buffer and a tile",
    ("interconnect", "chip_bit_side"): "one bit over one crossbar side of the chip's H-tree "
                                       "(a whole bus word per transfer)",
    ("interconnect", "tile_bit_side_novel"): "one bit over one crossbar side of a novel "
                                             "tile's H-tree",
    ("interconnect", "tile_bit_side_conventional"): "one bit over one crossbar side of a "
                                                    "conventional tile's H-tree",
    ("interconnect", "bus_bit_side"): "one bit over one crossbar side of a PE's input bus",
    ("dram", "bit"): "one bit moved to or from off-chip DRAM",
    ("gradient", "mac"): "one multiply-accumulate in the weight-gradient unit",
    ("gradient", "accumulate"): "one weight's gradient of one sample added to the batch's",
    ("attention", "mac"): "one multiply-accumulate of attention's activation x activation "
                          "products (scores, context and their gradients) in the attention unit",
    ("ce", "compare"): "one magnitude comparison in the comparator tree or top-k unit",
    ("write", "cell_pulse"): "one programming pulse on one physical cell (every copy)",
    ("write", "verify_read"): "one read-verify of one physical cell",
    ("write", "row_phase"): "one programming phase (SET or RESET) of one written row of one "
                            "crossbar: the unselected lines it biases",
    ("counters", "update"): "one row write-counter increment",
    ("write", "ars_rewrite_pulse"): "one programming pulse rewriting a row swapped by ARS",
    ("ars", "cell_read"): "one cell read while swapping rows",
    ("multiplex", "cell_pulse"): "one pulse reprogramming a time-multiplexed crossbar",
}


@dataclass(frozen=True)
class Transfer:
    """Cycles one transfer holds each stage: the layer's tile buffers (its own), then the
    global buffer and the interconnect (shared chip-wide, simpy resources)."""

    tile: int = 0
    global_buffer: int = 0
    interconnect: int = 0
    dram: int = 0

    @property
    def total(self) -> int:
        return self.tile + self.global_buffer + self.interconnect + self.dram


@dataclass(frozen=True)
class WaveCost:
    """Cycles of one wave (``images`` samples of the batch) of one layer."""

    images: int
    fw_in: Transfer
    fw_compute: int
    fw_out: Transfer
    bw_in: Transfer
    bw_compute: int
    bw_out: Transfer
    wg_in: Transfer
    wg_compute: int
    wg_store: Transfer
    fw_digital: int = 0      # the attention unit, before the forward MVM (scores, context)
    bw_digital: int = 0      # the attention unit, after the backward MVM (their gradients)


@dataclass(frozen=True)
class LayerTiming:
    """Cycle counts of one layer's operations (see docs/architecture.md)."""

    waves: tuple[WaveCost, ...]
    mvm: int                 # one input vector through one copy (forward)
    mvm_t: int               # one error vector through Wᵀ (backward)
    select_row: int          # one gradient row through the accumulator and CE
    select_drain: int        # CE pipeline drain after the last row (sgs) or 0
    topk_select: int         # top-k unit cycles for the whole layer (topk only)
    row_write: int           # program one row of one crossbar (all its cells)
    cell_write: int          # program one weight (its cells in one crossbar)
    row_read: int            # read one row out (ARS)
    write_jobs: int          # crossbars programmed per write operation group
    rows: int


class CostTable:
    """Per-action energies and per-layer latencies for one chip and one mapped network."""

    def __init__(self, hw: HwConfig, floorplan: Floorplan | None = None):
        self.hw = hw
        f = hw.clock.frequency_hz
        self.f = f
        self.read = cycles(hw.xbar.read_latency_s, f)
        self.adc = cycles(hw.adc.latency_s, f)
        self.dac = cycles(hw.dac.latency_s, f)
        self.pulse = cycles(hw.write.pulse_latency_s, f)
        self.compare = max(1, cycles(hw.ce.compare_latency_s, f))
        self.add = cycles(hw.accumulation.add_latency_s, f)
        self.hop = cycles(hw.interconnect.hop_latency_s, f)
        self.slices_in = math.ceil(hw.dac.input_bits / hw.dac.bits)
        self.input_bits = hw.dac.input_bits
        self.input_bytes = math.ceil(hw.dac.input_bits / 8)
        self.acc_bytes = math.ceil(hw.buffer.accumulator_bits / 8)
        self.floorplan = floorplan
        self.chip_tiles = (floorplan.tiles if floorplan is not None
                           and floorplan.mode == "network"
                           else max(1, hw.chip.crossbars // hw.chip.xbars_per_tile))
        self.network = floorplan is not None and floorplan.mode == "network"
        self.netchip = NetworkChip(hw, floorplan) if self.network else None
        self.gb_bits_per_cycle = self._global_buffer_bandwidth()
        self.hops = max(1, log2_ceil(self.chip_tiles))
        x, w = hw.xbar, hw.write
        self.energy = {
            ("crossbar", "cell_read"): x.read_energy_j,
            ("crossbar", "array_read"): x.array_read_energy_j,
            ("dac", "conversion"): hw.dac.energy_j,
            ("adc", "conversion"): hw.adc.energy_j,
            ("accumulation", "add"): hw.accumulation.add_energy_j,
            ("accumulation", "adder_bit"): hw.accumulation.bit_energy_j,
            ("activation", "op"): hw.activation.energy_j,
            ("pooling", "op"): hw.pooling.energy_j,
            ("buffer", "read_byte"): hw.buffer.read_energy_j,
            ("buffer", "write_byte"): hw.buffer.write_energy_j,
            ("buffer", "register_clock"): hw.buffer.register_clock_energy_j,
            ("global_buffer", "read_byte"): hw.global_buffer.read_energy_j,
            ("global_buffer", "write_byte"): hw.global_buffer.write_energy_j,
            ("interconnect", "bit"): hw.interconnect.energy_per_bit_j,
            ("interconnect", "chip_bit_side"): hw.interconnect.chip_tree_energy_j,
            ("interconnect", "tile_bit_side_novel"): hw.interconnect.novel_tile_tree_energy_j,
            ("interconnect", "tile_bit_side_conventional"):
                hw.interconnect.conventional_tile_tree_energy_j,
            ("interconnect", "bus_bit_side"): hw.interconnect.pe_bus_energy_j,
            ("dram", "bit"): hw.dram.energy_per_bit_j,
            ("gradient", "mac"): hw.gradient.mac_energy_j,
            ("gradient", "accumulate"): hw.gradient.accumulate_energy_j,
            ("attention", "mac"): hw.attention.mac_energy_j,
            ("ce", "compare"): hw.ce.compare_energy_j,
            ("write", "cell_pulse"): w.pulse_energy_j,
            ("write", "verify_read"): x.read_energy_j,
            ("write", "row_phase"): w.row_phase_energy_j,
            ("counters", "update"): hw.ce.counter_energy_j,
            ("write", "ars_rewrite_pulse"): w.pulse_energy_j,
            ("ars", "cell_read"): x.read_energy_j,
            ("multiplex", "cell_pulse"): w.pulse_energy_j,
        }
        # one input slice: DAC drive, array read, then the columns sharing an ADC one by one
        self.slice_cycles = self.dac + self.read + hw.adc.cols_per_adc * self.adc
        # a written cell takes pulses_per_phase pulses in the phase of its direction (SET or
        # RESET); a row runs every phase, since its cells move both ways
        self.pulses_per_cell = w.pulses_per_phase
        self.row_write_group = w.phases * w.pulses_per_phase * self.pulse
        self.verify = w.verify_reads * self.read

    def _global_buffer_bandwidth(self) -> int:
        """``global_buffer.bits_per_cycle``, or (auto) NeuroSim's global buffer: as many
        register-file cores working at once as the global bus has line-wide lanes, a line per
        ``line_latency`` each, every bit written once and read once (Chip.cpp:818-826)."""
        gb = self.hw.global_buffer
        if gb.bits_per_cycle != "auto":
            return int(gb.bits_per_cycle)
        units = self.floorplan.units if self.floorplan is not None else None
        if units is None:
            raise ConfigError("global_buffer.bits_per_cycle=auto: needs the network's layers "
                              "(the buffer is sized to the largest layer input)")
        if gb.line_latency_s <= 0:
            raise ConfigError("global_buffer.line_latency: must be positive with "
                              "global_buffer.bits_per_cycle=auto (a line takes time to access)")
        lanes = units.buffer_lanes(gb.line_bits)
        return max(1, int(lanes * gb.line_bits / (2 * gb.line_latency_s * self.f)))

    def pe_grid(self, m: LayerMapping) -> int:
        """PEs along a side of the layer's tiles (a conventional tile's T/P; 1 on a fixed
        floorplan)."""
        if self.netchip is None:
            return 1
        return self.netchip._kind(m)[0]

    def bus_share(self, m: LayerMapping) -> int:
        """With a network floorplan a layer reaches the global buffer through its tiles' share
        of the global bus: its transfers take ⌈tiles / its tiles⌉ times as long
        (Chip.cpp:818-826, 952-960)."""
        return -(-self.chip_tiles // max(1, m.chip_tiles)) if self.network else 1

    def gradient_ns(self, m: LayerMapping, write_parallel: int) -> float:
        """One sample's weight gradient of layer m on NeuroSim's SRAM grid (Chip.cpp:1045-1100,
        WeightGradientUnit.cpp:199-313): for each kernel offset the activations are loaded into
        the grid once, then the C_out error channels stream through it, one read each, shared by
        the copies of the layer's input matrix (positions × C_in·input bits) that fit in the
        grid; finally the accumulator adds the sample's gradient, write_parallel arrays' worth
        of weights per pass."""
        g = self.hw.gradient
        nr, nc = self.floorplan.units.gradient_grid
        cols = m.in_channels * self.input_bits
        P = m.positions
        if P != 1:
            sr = max(1, nr // max(1, cdiv(P, g.array_rows)))
            sc = max(1, nc // max(1, cdiv(cols, g.array_cols)))
        else:               # one position: the grid's rows all take copies (Chip.cpp:1057)
            sr, sc = nr, max(1, cols // g.array_cols)
        k2 = m.kernel_area
        passes = cdiv(m.cells, write_parallel * self.hw.xbar.rows * self.hw.xbar.cols)
        return 1e9 * (k2 * (m.cols * g.read_latency_s / (sr * sc) + g.load_latency_s)
                      + passes * g.accumulate_latency_s)

    # -- data volumes per sample (bits), NeuroSim V2.1's counting (Chip.cpp) --------------------

    def reuse(self, m: LayerMapping) -> int:
        """How many kernel rows share one fetch of an input row. Novel mapping: a conv's
        window slides down reusing kh − 1 rows, so each input row is fetched once per kernel
        row (NeuroSim counts input bits / kh for layers on novel tiles, Chip.cpp:945);
        conventional mapping (and a network floorplan's conventional tiles) fetch the whole
        unrolled k²·C_in input vector every time (Chip.cpp:811)."""
        if self.hw.mapping.scheme != "novel" or m.placement == "conventional":
            return 1
        return m.kernel_rows

    def bits_in(self, m: LayerMapping) -> int:
        """Input activations of one sample: each input row is fetched once per kernel row
        (a conv's window slides down reusing kh − 1 rows, as NeuroSim counts)."""
        return cdiv(m.rows * self.input_bits * m.positions, self.reuse(m))

    def bits_out(self, m: LayerMapping) -> int:
        """Output activations of one sample, after pooling."""
        return cdiv(m.cols * self.input_bits * m.positions, m.pool)

    def psum_bits(self, m: LayerMapping, backward: bool = False) -> int:
        """A layer's outputs of one sample as its shift-add writes them to the tile buffer, at
        ``accumulation.bits``, before activation and pooling (errors, backward: one per input
        row, counted as the inputs are)."""
        acc = self.hw.accumulation.bits
        if backward:
            return cdiv(m.rows * acc * m.positions, self.reuse(m))
        return m.cols * acc * m.positions

    def gradient_bits(self, m: LayerMapping) -> int:
        """Weight-gradient traffic of one sample with ``gradient.storage: dram``: the layer's
        partial gradient goes to DRAM and comes back to be accumulated (NeuroSim V2.1)."""
        if self.hw.gradient.storage != "dram":
            return 0
        return 2 * m.rows * m.cols * self.gradient_value_bits

    @property
    def gradient_value_bits(self) -> int:
        """``gradient.bits``, or (auto) the weight-gradient grid's output width."""
        b = self.hw.gradient.bits
        if b != "auto":
            return int(b)
        if self.floorplan is None or self.floorplan.units is None:
            raise ConfigError("gradient.bits=auto: needs the network's layers")
        return self.floorplan.units.gradient_bits

    def transfer(self, m: LayerMapping, bits: int, tile: bool = True, done: int = 0,
                 tile_bits: tuple[int, int] | None = None) -> Transfer:
        """``bits`` between the global buffer and the layer's tiles (or, ``tile=False``, the
        global buffer and the weight-gradient unit next to it), after ``done`` bits of the same
        stream: each stage's cycles are the difference of its cumulative whole cycles, so a
        stream cut into waves costs what it costs in one piece. The routers' latency
        (⌈log₂ tiles⌉ hops) is paid once by the stream's first bits (``done == 0``): the
        routers are pipelined (cut-through), and waves are a simulation granularity, so a
        later wave's bits follow the earlier ones through the filled pipeline; charging it
        per wave made a layer's cycles depend on ``engine.waves`` and gave every wave a fixed
        cost (a projection's cycles went 1 : 18.4 : 184 for 1, 20, 200 tokens).
        ``tile_bits`` = (bits, done) through the tile buffer when they differ (outputs are
        written there as partial sums)."""
        if bits <= 0:
            return Transfer()
        hw = self.hw
        t = max(1, m.chip_tiles)
        share = self.bus_share(m)
        gb = part(done * share, bits * share, self.gb_bits_per_cycle)
        if not tile:
            return Transfer(global_buffer=gb)
        tn, td = tile_bits if tile_bits is not None else (bits, done)
        tb = part(2 * td, 2 * tn, 8 * hw.buffer.bytes_per_cycle * t)   # written, then read
        ic = (part(done, bits, hw.interconnect.bits_per_cycle * t)
              + (self.hops * self.hop if done == 0 else 0))
        return Transfer(tile=tb, global_buffer=gb, interconnect=ic)

    def _ns(self, per: float, done: int, n: int) -> int:
        """Whole cycles of ``n`` more samples at ``per`` ns each, after ``done`` samples."""
        c = per * self.f * 1e-9
        return math.ceil((done + n) * c - 1e-9) - math.ceil(done * c - 1e-9)

    def net_transfer(self, m: LayerMapping, bits: int, done: int, images: int,
                     tile_ns: float, ic_ns: float) -> Transfer:
        """A network-sized chip's transfer of ``images`` samples (``bits`` per sample through
        the global buffer on the layer's bus share; tile buffer and H-trees from
        ``netchip``)."""
        share = self.bus_share(m)
        return Transfer(tile=self._ns(tile_ns, done, images),
                        global_buffer=part(bits * done * share, bits * images * share,
                                           self.gb_bits_per_cycle),
                        interconnect=self._ns(ic_ns, done, images))

    # -- what a layer does in one iteration (action counts; energy = counts x table) ----------

    def iteration_actions(self, m: LayerMapping, i: int, batch: int
                          ) -> dict[tuple[str, str, str], int]:
        """{(phase, component, action): count} of layer ``m`` (the i-th) in one iteration of
        ``batch`` samples: its forward and backward MVMs and data movement and its weight
        gradient, from the volumes its timing uses (``bits_in``, ``bits_out``, ``psum_bits``,
        ``gradient_bits``; on a network-sized chip ``netchip.actions``). The selection, writes
        and ARS come from the policy's counters (``energy.action_counts``)."""
        B = batch
        a: dict[tuple[str, str, str], int] = {}
        bi, bo = self.bits_in(m) * B, self.bits_out(m) * B
        V, R, PC, RB, CT, S = (m.vectors, m.rows, m.phys_cols, m.row_blocks, m.col_tiles,
                               self.slices_in)
        if self.netchip is not None:
            per = self.netchip.actions(m, self.bits_in(m), self.bits_out(m))
            for phase in ("forward", "backward") if i > 0 else ("forward",):
                for (comp, action), n in per.items():
                    a[phase, comp, action] = round(n * B)
            a["forward", "activation", "op"] = V * m.cols
            a["forward", "pooling", "op"] = V * m.cols if m.pool > 1 else 0
        else:
            # forward: inputs on the rows; only rows whose input bit is 1 draw current
            a["forward", "crossbar", "cell_read"] = round(V * S * R * PC * m.activity)
            a["forward", "dac", "conversion"] = V * S * R * CT
            a["forward", "adc", "conversion"] = V * S * PC * RB
            a["forward", "accumulation", "add"] = V * (S * PC * RB + PC * (RB - 1))
            a["forward", "activation", "op"] = V * m.cols
            a["forward", "pooling", "op"] = V * m.cols if m.pool > 1 else 0
            _move(a, "forward", bi, bo, self.psum_bits(m) * B)
            if i > 0:                        # layer 0 propagates no error to the input
                a["backward", "crossbar", "cell_read"] = round(V * S * PC * R * m.activity)
                a["backward", "dac", "conversion"] = V * S * PC * RB
                a["backward", "adc", "conversion"] = V * S * R * CT
                a["backward", "accumulation", "add"] = V * (S * R * CT + R * (CT - 1))
                _move(a, "backward", bo, bi, self.psum_bits(m, backward=True) * B)
        fw, bw = attention_split(m.attention_macs)
        a["forward", "attention", "mac"] = fw
        if i > 0:                            # with the layer's backward pass (timing: waves)
            a["backward", "attention", "mac"] = bw
        a["gradient", "gradient", "mac"] = m.cells * V
        if self.hw.gradient.model == "sram-grid":     # NeuroSim's gradient accumulator
            a["gradient", "gradient", "accumulate"] = m.cells * B
        a["gradient", "global_buffer", "read_byte"] = _bytes(bi + bo)
        g = self.gradient_bits(m) * B
        if self.netchip is not None:     # every bit through the global buffer: written, read
            a["gradient", "global_buffer", "write_byte"] = _bytes(bi + bo + g // 2)
            a["gradient", "global_buffer", "read_byte"] += _bytes(g // 2)
        if g:
            a["gradient", "dram", "bit"] = g
            a["gradient", "global_buffer", "write_byte"] = (
                a.get(("gradient", "global_buffer", "write_byte"), 0) + _bytes(g // 2))
            a["gradient", "global_buffer", "read_byte"] += _bytes(g // 2)
        return {k: v for k, v in a.items() if v}

    # -- per-layer timing ---------------------------------------------------------------------

    def mvm_cycles(self, row_blocks: int) -> int:
        """One input vector: every input slice, then the shift-add and the adder tree over the
        row blocks (pipelined: one stage per add latency)."""
        return self.slices_in * self.slice_cycles + self.add * (1 + log2_ceil(row_blocks))

    def _activation(self, m: LayerMapping, vectors: int) -> int:
        t = max(1, m.chip_tiles)
        c = cdiv(vectors * m.cols, self.hw.activation.values_per_cycle * t)
        if m.pool > 1:
            c += cdiv(vectors * m.cols, self.hw.pooling.values_per_cycle * t)
        return c

    def _gradient_cycles(self, m: LayerMapping, done: int, images: int,
                         write_parallel: int) -> int:
        """Cycles of the weight gradient of ``images`` samples after ``done`` samples."""
        g = self.hw.gradient
        if g.model == "throughput":
            return part(m.cells * m.positions * done, m.cells * m.positions * images,
                        g.macs_per_cycle)
        per = self.gradient_ns(m, write_parallel) * self.f * 1e-9
        return math.ceil((done + images) * per - 1e-9) - math.ceil(done * per - 1e-9)

    def waves(self, m: LayerMapping, batch: int, mvm: int, mvm_t: int,
              write_parallel: int = 1) -> tuple[WaveCost, ...]:
        """Each wave's share of the layer's work. The copies work through the layer's vectors
        as one stream, so a wave's cycles are the difference of whole cycles after it and
        before it: the waves add up to the layer's work in one piece."""
        hw = self.hw
        bi, bo = self.bits_in(m), self.bits_out(m)
        po, pb = self.psum_bits(m), self.psum_bits(m, backward=True)
        g = self.gradient_bits(m)
        fw_macs, bw_macs = attention_split(m.attention_macs)
        per_unit = batch * hw.attention.macs_per_cycle
        out = []
        done = 0
        for images in wave_sizes(batch, hw.engine.waves):
            v0, v = m.positions * done, m.positions * images          # vectors before, in it
            per_copy = part(v0, v, m.copies)
            act = self._activation(m, v0 + v) - self._activation(m, v0)
            # the wave's share of the attention products (MACs per iteration over the batch)
            digital = (part(fw_macs * done, fw_macs * images, per_unit),
                       part(bw_macs * done, bw_macs * images, per_unit))
            store = Transfer()
            if g:
                store = Transfer(global_buffer=part(g * done, g * images,
                                                    self.gb_bits_per_cycle),
                                 dram=part(g * done, g * images, hw.dram.bits_per_cycle))
            if self.netchip is not None:
                out.append(dataclasses.replace(
                    self._net_wave(m, images, done, per_copy, mvm, mvm_t, act, store,
                                   write_parallel), fw_digital=digital[0], bw_digital=digital[1]))
                done += images
                continue
            out.append(WaveCost(
                images=images,
                fw_in=self.transfer(m, bi * images, done=bi * done),
                fw_compute=per_copy * mvm + act,
                fw_out=self.transfer(m, bo * images, done=bo * done,
                                     tile_bits=(po * images, po * done)),
                bw_in=self.transfer(m, bo * images, done=bo * done),
                bw_compute=per_copy * mvm_t,
                bw_out=self.transfer(m, bi * images, done=bi * done,
                                     tile_bits=(pb * images, pb * done)),
                wg_in=self.transfer(m, (bi + bo) * images, tile=False, done=(bi + bo) * done),
                wg_compute=self._gradient_cycles(m, done, images, write_parallel),
                wg_store=store, fw_digital=digital[0], bw_digital=digital[1]))
            done += images
        return tuple(out)

    def _net_wave(self, m: LayerMapping, images: int, done: int, per_copy: int, mvm: int,
                  mvm_t: int, act: int, store: Transfer, write_parallel: int) -> WaveCost:
        """One wave on a network-sized chip: the backward pass moves what the forward pass
        moves, the other way (NeuroSim charges both alike, Chip.cpp:967-977)."""
        bi, bo = self.bits_in(m), self.bits_out(m)
        p = self.netchip.path(m, bi, bo)
        acc = self._ns(p.accumulate, done, images)
        fin = self.net_transfer(m, bi, done, images, p.tile_in, p.ic_in)
        fout = self.net_transfer(m, bo, done, images, p.tile_out, p.ic_out)
        return WaveCost(
            images=images, fw_in=fin, fw_compute=per_copy * mvm + act + acc, fw_out=fout,
            bw_in=fout, bw_compute=per_copy * mvm_t + acc, bw_out=fin,
            wg_in=self.transfer(m, (bi + bo) * images, tile=False, done=(bi + bo) * done),
            wg_compute=self._gradient_cycles(m, done, images, write_parallel),
            wg_store=store)

    def layer(self, m: LayerMapping, selection: str, k: int, batch: int,
              write_parallel: int = 1) -> LayerTiming:
        hw = self.hw
        n_cols = m.cols
        # the CE tree takes tree_width values per compare step; a wider row needs several passes
        ce_passes = math.ceil(n_cols / hw.ce.tree_width) * self.compare
        accumulates = selection != "dense"
        # SGS and top-k read the residual row, add the gradient row and write it back
        buffer_rw = (math.ceil(2 * n_cols * self.acc_bytes / hw.buffer.bytes_per_cycle)
                     if accumulates else 0)
        select_row = max(ce_passes, buffer_rw) if accumulates else 0
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
        mvm = self.mvm_cycles(m.row_blocks)
        mvm_t = self.mvm_cycles(m.col_tiles)
        jobs = {"dense": m.tiles, "sgs-row": m.col_tiles}.get(selection, 1)
        return LayerTiming(
            waves=self.waves(m, batch, mvm, mvm_t, write_parallel),
            mvm=mvm, mvm_t=mvm_t, select_row=select_row, select_drain=drain, topk_select=topk,
            row_write=row_write, cell_write=cell_write, row_read=row_read, write_jobs=jobs,
            rows=m.rows)


def _bytes(bits: int) -> int:
    return -(-bits // 8)


def _move(a: dict, phase: str, bits_in: int, bits_out: int, psum: int) -> None:
    """Inputs from the global buffer over the interconnect into the tile buffers, outputs
    back: every input bit and every partial-sum bit of the outputs is written to and read
    from a tile buffer once; activated (pooled) outputs cross the interconnect."""
    tb = _bytes(bits_in) + _bytes(psum)
    a[phase, "buffer", "write_byte"] = tb
    a[phase, "buffer", "read_byte"] = tb
    a[phase, "global_buffer", "read_byte"] = _bytes(bits_in)
    a[phase, "global_buffer", "write_byte"] = _bytes(bits_out)
    a[phase, "interconnect", "bit"] = bits_in + bits_out


def attention_split(macs: int) -> tuple[int, int]:
    """An attention module's MACs per iteration (the manifest's ``left_out`` ``macs``) as
    (forward, backward): forward computes the scores Q·Kᵀ and the context A·V, backward four
    products of the same size (dA, dV, dQ, dK), so forward is a third."""
    fw = macs // 3
    return fw, macs - fw


def wave_sizes(batch: int, waves: int) -> list[int]:
    """The batch split into ``waves`` near-equal groups of samples (larger groups first)."""
    w = max(1, min(waves, batch))
    q, r = divmod(batch, w)
    return [q + (1 if i < r else 0) for i in range(w)]

"""A layer's data path on a network-sized chip (``chip.floorplan: network``), per sample.

NeuroSim V2.1 places each layer on tiles of a known geometry (``floorplan.py``): a novel tile
is a ⌈√K⌉ × ⌈√K⌉ grid of K PEs of Pn × Pn cells, a conventional tile a (T/P) × (T/P) grid of
P × P PEs; a PE is a square of crossbars. That geometry decides, per layer and sample:

- **tile buffers** (Tile.cpp:615-627, 757-797): the layer's busiest tile takes its rows of each
  input vector (a novel tile shares each input over its ⌈√K⌉ kernel columns) and gives out its
  columns' partial sums at 1 + the adder width (a novel tile's K PEs are added first); every
  bit is written and read once, in lines of ``buffer.line_bits`` at ``buffer.line_latency``,
  inputs over as many lanes as a conventional tile's inputs fill, outputs over one;
- **H-trees** (HTree.cpp, Chip.cpp:814-815, Tile.cpp:635): the inputs and outputs cross the
  chip's H-tree on the layer's share of the global bus, one bus word per transfer, and the
  tile's H-tree, one PE-row word per transfer; a transfer takes the root-to-leaf path of its
  tree (in tile or PE sides, from the tree's grid) at ``interconnect.wire_delay`` per mm, the
  sides from the area model (``area.py``'s per-crossbar units);
- **adder trees that the copies do not share** (Tile.cpp:741-753, Chip.cpp:783-798, 916-931):
  a novel tile adds its K PEs' outputs for every input vector and ADC step; a layer over
  several tile rows adds its tiles' partial sums on the chip's adder trees, one output channel
  after another; each is a ripple adder of ``accumulation.bit_latency`` per bit and stage.

Everything is per sample and per phase (forward; the backward pass moves the same volumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import HwConfig
from ..floorplan import Floorplan
from ..mapping import LayerMapping

# a register's data (D to Q) energy relative to its clock's (DFF.cpp's capacitances)
DATA_PER_CLOCK = 0.8


@dataclass(frozen=True)
class _Place:
    """Where a layer sits, as both its timing and its counts need it."""

    novel: bool
    K: int                    # PEs per tile (the kernel area on a novel tile, else 1)
    grid: int                 # PEs along a tile side
    pe: int                   # cells along a PE side
    side: int                 # cells along a tile side (for rows)
    out_bits: int             # 1 + the adder width of a PE's outputs
    tiles_row: int            # the layer's tiles along its rows
    tiles_col: int
    share: int                # its share of the global bus, bits per transfer
    full_dup: bool            # a conventional layer copied into every PE of its tile


@dataclass(frozen=True)
class LayerPath:
    """Nanoseconds per sample and phase."""

    tile_in: float           # inputs through the tile buffer (written, read)
    tile_out: float          # partial sums through the tile buffer
    ic_in: float             # inputs over the chip and tile H-trees
    ic_out: float            # outputs over them
    accumulate: float        # tile and chip adder trees not divided among copies
    transfers: int           # H-tree transfers (bus words) per sample and phase


def _tree_path(rows: int, cols: int) -> float:
    """Root-to-leaf length of an H-tree over a rows × cols grid, in grid units: the tree part
    halves from 2^n units at the root, then the remaining main bus (HTree.cpp:113-121, 205-236,
    with square units)."""
    if rows * cols <= 1:
        return 0.0
    n = math.ceil(math.log2(max(rows, cols)))
    xc = int(math.floor(math.log2(min(rows, cols)))) if min(rows, cols) > 0 else 0
    if cols - xc < 1:
        xc -= 1
    main = min(cols - xc, xc)
    return 2 * (2 ** n - 1) + main


def _tree_bits(inputs: int, first_bits: int) -> int:
    """Adder bits a value passes through an adder tree of ``inputs`` inputs: ⌈log2 inputs⌉
    stages, one bit wider each (AdderTree.cpp:118-151)."""
    stages = math.ceil(math.log2(inputs)) if inputs > 1 else 0
    return sum(first_bits + s for s in range(stages))


class NetworkChip:
    """The per-sample data path of every layer of a network-sized chip."""

    def __init__(self, hw: HwConfig, plan: Floorplan):
        self.hw = hw
        self.plan = plan
        x = hw.xbar
        adcs = -(-x.cols // hw.adc.cols_per_adc) + -(-x.rows // hw.adc.cols_per_adc)
        per_xbar = (x.area_m2 + x.periphery_area_m2 + (x.rows + x.cols) * hw.dac.area_m2
                    + adcs * (hw.adc.area_m2 + hw.accumulation.area_m2) + hw.ce.area_m2)
        self.xbar_mm2 = per_xbar * 1e6
        self.sa = x.rows
        # adder width of a PE's output: ADC bits + input bits + cells per weight + a carry
        self.psum_bits = hw.adc.bits + hw.dac.input_bits + x.cells_per_weight + 1

    # geometry of the two tile kinds -----------------------------------------------------------

    def _kind(self, m: LayerMapping) -> tuple[int, int, int]:
        """(PE grid side of the tile, PE side in cells, tile side in cells for rows)."""
        p = self.plan
        if m.placement == "novel":
            return math.ceil(math.sqrt(p.novel_pes)), p.novel_pe_side, p.novel_pe_side
        return (max(1, p.conventional_tile_side // p.conventional_pe_side),
                p.conventional_pe_side, p.conventional_tile_side)

    def _side_mm(self, crossbars: int) -> float:
        return math.sqrt(crossbars * self.xbar_mm2)

    def _place(self, m: LayerMapping) -> _Place:
        p = self.plan
        grid, pe, side = self._kind(m)
        novel = m.placement == "novel"
        tiles_row = self._tiles_row(m)
        u = p.units
        share = max(1, math.ceil(u.bus_bits * m.chip_tiles / p.tiles)) if u and u.bus_bits else 1
        return _Place(novel=novel, K=p.novel_pes if novel else 1, grid=grid, pe=pe, side=side,
                      out_bits=self.psum_bits + math.ceil(math.log2(max(1, pe // self.sa))) + 1,
                      tiles_row=tiles_row, tiles_col=max(1, m.chip_tiles // tiles_row),
                      share=share, full_dup=not novel and min(m.copy_grid) >= grid)

    def _chip_tree(self, pe: int) -> tuple[int, int]:
        """The chip's adder trees over a layer's tile rows: (trees, first stage's bits) —
        as many trees as the widest tile's ADC lanes, wide enough for its partial sums
        (Chip.cpp:450-483)."""
        p = self.plan
        through = (max(p.conventional_tile_side, math.ceil(math.sqrt(p.novel_pes))
                       * p.novel_pe_side) if p.novel_pes else p.conventional_tile_side)
        cm_grid = max(1, p.conventional_tile_side // p.conventional_pe_side)
        widest = max(pe // self.sa, p.novel_pe_side // self.sa) * max(
            cm_grid, math.ceil(math.sqrt(p.novel_pes)) if p.novel_pes else 1)
        return (-(-through // self.hw.adc.cols_per_adc),
                self.psum_bits + math.ceil(math.log2(max(1, widest))))

    def path(self, m: LayerMapping, bits_in: int, bits_out: int) -> LayerPath:
        """``bits_in``/``bits_out``: what the layer moves through the global buffer per sample
        and phase (``CostTable.bits_in``/``bits_out``)."""
        hw, p = self.hw, self.plan
        nb = hw.dac.input_bits
        g = self._place(m)
        novel, K, grid, pe, side, out_bits = g.novel, g.K, g.grid, g.pe, g.side, g.out_bits
        # the busiest tile's rows and columns
        rows_t = min(m.in_channels, pe) * K if novel else min(m.rows, side)
        cols_t = min(m.phys_cols, pe if novel else side)
        in_t = rows_t * m.positions * nb / (grid if novel else 1)
        out_t = cols_t * out_bits * m.positions / (K if novel else 1)
        b = hw.buffer
        lb = b.line_bits
        cm_grid = max(1, p.conventional_tile_side // p.conventional_pe_side)
        lanes_in = max(1, min(-(-cm_grid * nb * self.sa // (lb * lb)), -(-grid * self.sa // lb)))
        out_line = lb if novel else (out_bits - 1) * cm_grid
        t = b.line_latency_s * 1e9
        tile_in = 2 * in_t / lb * t / lanes_in
        tile_out = 2 * out_t / out_line * t
        # H-trees: the chip's on the layer's share of the global bus, the tile's one PE row wide
        share = g.share
        tiles_per_kind = (p.xbars_per_novel_tile if novel else p.xbars_per_conventional_tile)
        gr, gc = p.grid
        wire = hw.interconnect.wire_delay_ns_per_mm
        chip_hop = _tree_path(gr, gc) * self._side_mm(tiles_per_kind) * wire
        pe_xbars = (pe // self.sa) ** 2
        tile_hop = _tree_path(grid, grid) * self._side_mm(pe_xbars) * wire
        tile_bus = grid * self.sa
        n_in, n_out = math.ceil(bits_in / share), math.ceil(bits_out / share)
        ic_in = n_in * chip_hop + math.ceil(in_t / tile_bus) * tile_hop
        ic_out = n_out * chip_hop + math.ceil(out_t / tile_bus) * tile_hop
        # adder trees the copies do not share
        reads = m.positions * hw.adc.cols_per_adc
        bit = hw.accumulation.bit_latency_s * 1e9
        acc = 0.0
        if novel:
            acc += reads * _tree_bits(K, out_bits - 1) * bit
        if g.tiles_row > 1:
            trees, first = self._chip_tree(pe)
            acc += (g.tiles_col * m.cols * math.ceil(m.positions / trees)
                    * _tree_bits(g.tiles_row, first) * bit)
        return LayerPath(tile_in=tile_in, tile_out=tile_out, ic_in=ic_in, ic_out=ic_out,
                         accumulate=acc, transfers=n_in + n_out)

    # energy: what a layer does per sample and phase, as action counts -------------------------

    def row_blocks(self, m: LayerMapping) -> int:
        """Crossbar rows of one copy that an input vector reads: a novel tile's K PEs each
        read their kernel offset's C_in rows, in blocks of a crossbar per novel PE row."""
        p = self.plan
        if m.placement != "novel":
            return -(-m.rows // self.sa)
        full, rest = divmod(m.in_channels, p.novel_pe_side)
        per = full * (p.novel_pe_side // self.sa) + -(-rest // self.sa)
        return p.novel_pes * per

    def actions(self, m: LayerMapping, bits_in: int, bits_out: int) -> dict[tuple[str, str],
                                                                             float]:
        """Counts per sample and phase (NeuroSim V2.1's energy, Chip.cpp:964-981, Tile.cpp,
        ProcessingUnit.cpp, SubArray.cpp:2104-2137): conversions and crossbar reads of one copy
        (copies split the vectors, not the work), adder-tree bits, global-buffer accesses and
        bits × path on the chip's H-tree (one bus word per transfer), the tile's H-tree and the
        PE buses, paths in crossbar sides."""
        hw, p = self.hw, self.plan
        nb = hw.dac.input_bits
        slices = -(-nb // hw.dac.bits)
        rb = self.row_blocks(m)
        vec_bits = m.positions * slices
        g = self._place(m)
        novel, K, grid, pe, side, out_bits = g.novel, g.K, g.grid, g.pe, g.side, g.out_bits
        a: dict[tuple[str, str], float] = {
            ("adc", "conversion"): vec_bits * rb * m.phys_cols,
            ("crossbar", "array_read"): vec_bits * rb * -(-m.phys_cols // self.sa),
            ("global_buffer", "read_byte"): (bits_in + bits_out) / 8,
            ("global_buffer", "write_byte"): (bits_in + bits_out) / 8,
        }
        a["accumulation", "adder_bit"] = self._adder_bits(m, g)
        # H-trees: the chip's (charged per bus word), the tiles', the PE buses
        share = g.share
        words = math.ceil((bits_in + bits_out) / share)
        gr, gc = p.grid
        tile_side = (grid * pe if novel else side) / self.sa
        a["interconnect", "chip_bit_side"] = share * words * _energy_path(gr, gc) * tile_side
        tiles_row, tiles_col = g.tiles_row, g.tiles_col
        in_all = m.rows * m.positions * nb / (grid if novel else 1) * tiles_col
        out_all = m.phys_cols * out_bits * m.positions / K * tiles_row
        # the PEs' input and output registers: clocked whole for every PE row and every
        # output bit of every PE (DFF.cpp:147-167 as ProcessingUnit.cpp:640-690 calls it), so an
        # FC layer's single vector pays the whole arrays
        if novel:
            rows_pe, cols_pe = K * m.in_channels * tiles_col, K * m.phys_cols * tiles_row
        elif g.full_dup:                        # the matrix copied into every PE: one PE
            rows_pe, cols_pe = m.rows, m.phys_cols
        else:
            rows_pe = m.rows * -(-m.phys_cols // pe)
            cols_pe = m.phys_cols * -(-m.rows // pe)
        in_regs = nb * self.sa
        stages = out_bits - 1 - self.psum_bits        # adder stages over the PE's rows
        out_regs = (self.sa // hw.adc.cols_per_adc) * (stages + hw.adc.bits + nb
                                                       + hw.xbar.cells_per_weight)
        a["buffer", "register_clock"] = (
            rows_pe * (in_regs + DATA_PER_CLOCK * min(nb * m.positions, in_regs))
            + self.psum_bits * cols_pe * (out_regs + DATA_PER_CLOCK * min(m.positions, out_regs)))
        # the tile buffers: every bit written once and read once
        a["buffer", "write_byte"] = (in_all + out_all) / 8
        a["buffer", "read_byte"] = (in_all + out_all) / 8
        kind = "novel" if novel else "conventional"
        a["interconnect", f"tile_bit_side_{kind}"] = (in_all + out_all) * pe / self.sa
        # PE buses: the inputs in, each ADC's output out, per subarray row of the PE
        adc_bits = hw.adc.bits
        if novel:
            bus_out = (K * m.phys_cols * adc_bits * m.positions * tiles_row
                       * -(-m.in_channels // (tiles_row * self.sa)))
        else:
            pes_row = 1 if g.full_dup else -(-m.rows // pe)
            bus_out = (m.phys_cols * adc_bits * m.positions * pes_row
                       * -(-min(m.rows, pe) // self.sa))
        a["interconnect", "bus_bit_side"] = ((m.rows * m.positions * nb * tiles_col + bus_out)
                                             * max(0, pe // self.sa - 1))
        return a

    def _tiles_row(self, m: LayerMapping) -> int:
        p = self.plan
        if m.placement == "novel":
            return max(1, math.ceil(m.in_channels / p.novel_pe_side))
        return max(1, math.ceil(m.rows / p.conventional_tile_side))

    def _adder_bits(self, m: LayerMapping, g: _Place) -> float:
        """Full-adder bits of the PE, tile and chip adder trees per sample, every tree of a
        unit charged (AdderTree.cpp:153-190)."""
        p, hw = self.plan, self.hw
        novel, K, grid, pe = g.novel, g.K, g.grid, g.pe
        cpa = hw.adc.cols_per_adc
        reads = m.positions * cpa
        total = 0.0
        pe_rows = min(m.in_channels if novel else m.rows, pe)
        pe_inputs = -(-pe_rows // self.sa)
        pe_trees = (pe // self.sa) * self.sa // cpa
        if pe_inputs > 1 and not g.full_dup:
            pes = K if novel else max(1, -(-m.rows // pe)) * max(1, -(-m.phys_cols // pe))
            total += pes * reads * pe_trees * _fa_bits(pe_inputs, self.psum_bits)
        tile_trees = grid * self.sa // cpa
        if novel:
            total += reads * tile_trees * _fa_bits(K, g.out_bits - 1)
        elif not g.full_dup:
            inputs = max(1, -(-min(m.rows, p.conventional_tile_side) // pe))
            if m.copies == 1:
                inputs = grid
            if inputs > 1:
                total += reads * tile_trees * _fa_bits(inputs, g.out_bits - 1)
        if g.tiles_row > 1:
            trees, first = self._chip_tree(pe)
            chip_reads = g.tiles_col * m.cols * math.ceil(m.positions / trees)
            total += chip_reads * trees * _fa_bits(g.tiles_row, first)
        return total


def _fa_bits(inputs: int, first_bits: int) -> int:
    """Full-adder bits of one adder tree of ``inputs`` inputs: floor(j/2) adders per stage,
    j halving (AdderTree.cpp:75-84)."""
    total, j, bits = 0, inputs, first_bits
    while j > 1:
        total += (j // 2) * bits
        j //= 2
        bits += 1
    return total


def _energy_path(rows: int, cols: int) -> float:
    """The H-tree energy path in grid units: half the tree's latency path, then the main bus
    (HTree.cpp:336-372)."""
    if rows * cols <= 1:
        return 0.0
    n = math.ceil(math.log2(max(rows, cols)))
    xc = int(math.floor(math.log2(min(rows, cols))))
    if cols - xc < 1:
        xc -= 1
    return (2 ** n - 1) + min(cols - xc, xc)

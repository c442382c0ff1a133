"""What the chip has: tiles, processing elements (PEs) and crossbars, and where each layer sits.

Two floorplans (``chip.floorplan``):

``fixed``
    A chip of ``chip.crossbars`` crossbars in tiles of ``chip.xbars_per_tile`` (TIME, ISAAC):
    the same chip for every network. A layer's copies (``mapping.duplicate``) occupy whole
    tiles; the chip is checked for room.

``network``
    The chip sized to the network as DNN+NeuroSim V2.1 sizes it (Chip.cpp, ChipDesignInitialize
    and ChipFloorPlan, commit 18289cb; line numbers below are that commit's). With novel mapping
    (``mapping.scheme: novel``, NeuroSim's ``novelMapping = true``) the most frequent kernel area
    K (ties: the first in layer order, Chip.cpp:106-123) gets *novel* tiles of K PEs, one PE per
    kernel offset holding that offset's C_in × C_out slice; every other layer (a first conv with
    fewer than a crossbar's rows, 1×1 convs or FC layers when K is 3×3, ...) goes to
    *conventional* tiles that hold the unrolled k²C_in × C_out matrix directly
    (Chip.cpp:125-146). Tile and PE sides are powers of two chosen to maximize the fraction of
    cells that hold weights (Chip.cpp:213-306, 1154-1191). A layer is copied into the free
    crossbar rows and columns of its PE and, on conventional tiles, into the free PE rows and
    columns of its tile (Chip.cpp:1193-1282): the copies are NeuroSim's "speed-up".

Both give, per layer, the tiles its copies occupy and the copies; and for the chip, the tile
and crossbar counts the area model (``area.py``) multiplies by per-unit areas, and the tile grid
the interconnect (H-tree) spans.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import HwConfig
from .errors import ConfigError


@dataclass(frozen=True)
class LayerShape:
    """What the floorplan needs of a layer: the unrolled matrix and its kernel."""

    name: str
    rows: int                 # k²·C_in (matrix rows)
    phys_cols: int            # C_out × physical cells per weight
    kernel_area: int = 1      # kh·kw (1 for linear)
    in_channels: int = 0      # C_in (rows for linear)


@dataclass(frozen=True)
class Placement:
    """Where one layer sits: tile kind, tiles (all its copies) and copies."""

    kind: str                 # "novel" | "conventional" | "fixed"
    tiles: int
    copies: int
    utilization: float        # weights (all copies) / cells of its tiles
    copy_grid: tuple[int, int] = (1, 1)   # copies along rows, columns


@dataclass(frozen=True)
class ChipUnits:
    """Chip-level units NeuroSim V2.1 sizes to the network (Chip.cpp:378-443)."""

    input_bits: int            # bits of the largest layer input (the global buffer's share)
    overhead_bits: int         # the gradient accumulator's buffer overhead
    write_parallel: int        # arrays programmed at once (numArrayWriteParallel)
    bus_bits: int              # global bus width (0 for a fixed floorplan)
    gradient_grid: tuple[int, int]   # SRAM arrays of the weight-gradient grid (rows, cols)
    gradient_bits: int = 0     # bits of one weight-gradient value (gradient.bits, resolved)

    @property
    def buffer_bits(self) -> int:
        return self.input_bits + self.overhead_bits

    def buffer_cores(self, line_bits: int) -> int:
        """Register-file cores of line_bits x line_bits bits (Chip.cpp:441 takes the ceiling of
        an integer division, so a partly used core is not counted: we follow its code)."""
        return max(1, self.buffer_bits // (line_bits * line_bits))

    def buffer_lanes(self, line_bits: int) -> int:
        """Cores accessed at once: as many as the global bus has lanes (Chip.cpp:823)."""
        lanes = -(-self.bus_bits // line_bits) if self.bus_bits else self.buffer_cores(line_bits)
        return max(1, min(self.buffer_cores(line_bits), lanes))


@dataclass(frozen=True)
class Floorplan:
    mode: str                                     # "network" | "fixed"
    layers: tuple[Placement, ...]
    crossbars: int                                # crossbars on the chip
    tiles_novel: int = 0
    tiles_conventional: int = 0
    xbars_per_novel_tile: int = 0
    xbars_per_conventional_tile: int = 0
    novel_pes: int = 0                            # PEs per novel tile (the kernel area K)
    novel_pe_side: int = 0                        # cells per side of a novel PE
    conventional_tile_side: int = 0
    conventional_pe_side: int = 0
    fixed_tiles: int = 0
    units: ChipUnits | None = None                # network-sized units (``size_units``)

    @property
    def tiles(self) -> int:
        return self.tiles_novel + self.tiles_conventional + self.fixed_tiles

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles as a near-square grid (rows, cols): what the H-tree spans (Chip.cpp:329-330)."""
        r = max(1, math.ceil(math.sqrt(self.tiles)))
        return r, max(1, math.ceil(self.tiles / r))

    @property
    def utilization(self) -> float:
        """Tile-weighted mean of the layers' utilization (NeuroSim's 'Memory Utilization of
        Whole Chip', main.cpp:192-197)."""
        t = sum(p.tiles for p in self.layers)
        return sum(p.tiles * p.utilization for p in self.layers) / t if t else 0.0

    def to_dict(self) -> dict:
        out = {"mode": self.mode, "tiles": self.tiles, "crossbars": self.crossbars,
               "grid": list(self.grid), "utilization": self.utilization}
        if self.units is not None:
            u = self.units
            out.update(write_parallel_arrays=u.write_parallel, global_bus_bits=u.bus_bits,
                       global_buffer_bits=u.buffer_bits,
                       gradient_grid=list(u.gradient_grid))
        if self.mode == "network":
            out.update(tiles_novel=self.tiles_novel,
                       tiles_conventional=self.tiles_conventional,
                       novel_tile=f"{self.novel_pes}x{self.novel_pe_side}x{self.novel_pe_side}"
                       if self.novel_pes else None,
                       conventional_tile=f"{self.conventional_tile_side}x"
                       f"{self.conventional_tile_side}",
                       conventional_pe=f"{self.conventional_pe_side}x"
                       f"{self.conventional_pe_side}")
        return out


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n))) if n > 1 else 1


def _fit(n_side: int, need: int) -> int:
    """Whole copies of ``need`` units that fit in ``n_side`` units (at least 1)."""
    return max(1, n_side // need)


def plan_network(shapes: Sequence[LayerShape], hw: HwConfig) -> Floorplan:
    """NeuroSim V2.1's floorplan (layer by layer; its pipeline mode is not modelled)."""
    sa = hw.xbar.rows
    if hw.xbar.cols != sa:
        raise ConfigError("chip.floorplan=network: needs square crossbars (NeuroSim sizes tiles "
                          f"in whole subarrays), got xbar.rows={sa}, xbar.cols={hw.xbar.cols}")
    novel = hw.mapping.scheme == "novel"
    L = len(shapes)
    areas = [s.kernel_area for s in shapes]
    # the most frequent kernel area; ties go to the one that comes first (Chip.cpp:106-123)
    K = 0
    if novel:
        best = 0
        for a in areas:
            c = areas.count(a)
            if c > best:
                best, K = c, a
    is_nm = [novel and s.kernel_area == K and s.rows >= sa for s in shapes]
    nm = [i for i in range(L) if is_nm[i]]
    cm = [i for i in range(L) if not is_nm[i]]
    cube = [_pow2_ceil(s.phys_cols) for s in shapes]

    def n_tiles_nm(p: int) -> int:
        return sum(math.ceil(shapes[i].in_channels / p) * math.ceil(shapes[i].phys_cols / p)
                   for i in nm)

    def n_tiles_cm(t: int) -> int:
        return sum(math.ceil(shapes[i].rows / t) * math.ceil(shapes[i].phys_cols / t)
                   for i in cm)

    weights_nm = sum(shapes[i].rows * shapes[i].phys_cols for i in nm)
    weights_cm = sum(shapes[i].rows * shapes[i].phys_cols for i in cm)
    # novel PE side: the largest power of two >= every novel layer's columns, halved while
    # that raises utilization, down to 2 crossbars a side (Chip.cpp:213-234)
    pn = 0
    if nm:
        pn = max(max(cube[i] for i in nm), 2 * sa)
        best_u, p = 0.0, pn
        while p > 2 * sa:
            u = weights_nm / (n_tiles_nm(p) * p * p * K)
            if u > best_u:
                best_u, pn = u, p
            p //= 2
    # conventional tile side: the same search, down to 4 crossbars a side; its PE is half the
    # tile a side (the PE search of Chip.cpp:245-264 keeps T/2 unless a smaller PE raises the
    # copies' utilization above the tile's)
    t_cm = max(max((cube[i] for i in cm), default=0), 4 * sa)
    best_u, t = 0.0, t_cm
    while t > 4 * sa:
        u = weights_cm / (n_tiles_cm(t) * t * t) if cm else 0.0
        if u > best_u:
            best_u, t_cm = u, t
        t //= 2
    n_cm = n_tiles_cm(t_cm)

    def pe_copies(p: int) -> list[tuple[int, int]]:
        out = []
        for i in range(L):
            s = shapes[i]
            if not is_nm[i] and (s.rows <= t_cm or s.phys_cols <= t_cm):
                n = math.ceil(t_cm / p)
                out.append((_fit(n, math.ceil(s.rows / p)), _fit(n, math.ceil(s.phys_cols / p))))
            else:
                out.append((1, 1))
        return out

    p_cm, p = t_cm // 2, t_cm // 2
    while p > 2 * sa:
        dup = pe_copies(p)
        u = sum(dup[i][0] * dup[i][1] * shapes[i].rows * shapes[i].phys_cols
                for i in cm) / (n_cm * t_cm * t_cm)
        if u > best_u:
            best_u, p_cm = u, p
        p //= 2
    pe_dup = pe_copies(p_cm)
    layers = []
    for i, s in enumerate(shapes):
        rows, side = (s.in_channels, pn) if is_nm[i] else (s.rows, p_cm)
        if rows <= side or s.phys_cols <= side:     # copies in the PE's free crossbars
            n = math.ceil(side / sa)
            sa_dup = (_fit(n, math.ceil(rows / sa)), _fit(n, math.ceil(s.phys_cols / sa)))
        else:
            sa_dup = (1, 1)
        copies = pe_dup[i][0] * pe_dup[i][1] * sa_dup[0] * sa_dup[1]
        if is_nm[i]:
            tiles = math.ceil(s.in_channels / pn) * math.ceil(s.phys_cols / pn)
            util = copies * s.in_channels * s.phys_cols / (tiles * pn * pn)
        else:
            tiles = math.ceil(s.rows / t_cm) * math.ceil(s.phys_cols / t_cm)
            util = copies * s.rows * s.phys_cols / (tiles * t_cm * t_cm)
        grid = (pe_dup[i][0] * sa_dup[0], pe_dup[i][1] * sa_dup[1])
        layers.append(Placement("novel" if is_nm[i] else "conventional", tiles, copies, util,
                                grid))
    tiles_nm = sum(p.tiles for p in layers if p.kind == "novel")
    x_nm = K * (pn // sa) ** 2 if nm else 0
    x_cm = (t_cm // sa) ** 2
    return Floorplan(mode="network", layers=tuple(layers),
                     crossbars=tiles_nm * x_nm + n_cm * x_cm, tiles_novel=tiles_nm,
                     tiles_conventional=n_cm, xbars_per_novel_tile=x_nm,
                     xbars_per_conventional_tile=x_cm, novel_pes=K if nm else 0,
                     novel_pe_side=pn, conventional_tile_side=t_cm, conventional_pe_side=p_cm)


def plan_fixed(arrays_per_copy: Sequence[int], inputs: Sequence[int], hw: HwConfig) -> Floorplan:
    """``chip.crossbars`` in tiles of ``chip.xbars_per_tile``; copies by ``mapping.duplicate``
    (``auto``: fill each layer's tiles with copies, never more than the layer has input
    vectors; if the chip is then too small, take copies back from the layer with the most)."""
    dup = hw.mapping.duplicate
    per_tile = hw.chip.xbars_per_tile
    n = len(arrays_per_copy)
    if dup == "none":
        copies = [1] * n
    elif dup != "auto":
        copies = [int(dup)] * n
    else:
        copies = [max(1, min(-(-a // per_tile) * per_tile // a, v))
                  for a, v in zip(arrays_per_copy, inputs)]
        capacity = hw.chip.crossbars
        while (sum(c * a for c, a in zip(copies, arrays_per_copy)) > capacity
               and max(copies) > 1):
            i = max(range(n), key=lambda j: (copies[j], -j))
            copies[i] -= 1
    layers = []
    for a, c in zip(arrays_per_copy, copies):
        tiles = -(-a * c // per_tile)
        layers.append(Placement("fixed", tiles, c, a * c / (tiles * per_tile)))
    return Floorplan(mode="fixed", layers=tuple(layers), crossbars=hw.chip.crossbars,
                     fixed_tiles=-(-hw.chip.crossbars // per_tile))


@dataclass(frozen=True)
class LayerIO:
    """What the chip-level units need of a layer."""

    input_volume: int          # values of one sample's input (H·W·C_in)
    positions: int             # input vectors per sample (output positions)
    in_channels: int


def size_units(plan: Floorplan, io: Sequence[LayerIO], hw: HwConfig, batch: int) -> Floorplan:
    """The chip-level units of ``plan`` for this network and batch.

    - Global buffer (Chip.cpp:408-441): the largest layer input at dac.input_bits per value,
      plus an overhead for the gradient accumulator that starts at one crossbar of
      ⌈log2 batch⌉-bit values and doubles until it is at least the input share. (NeuroSim reads
      the gradient precision before it is set, so its overhead starts from the batch bits
      alone; we follow its code.)
    - Arrays written at once (numArrayWriteParallel, Chip.cpp:413-434): the overhead's first
      size in whole crossbars of weight bits, doubled with it.
    - Global bus (Chip.cpp:385-406, ``network`` only): each layer's tiles contribute their
      width in columns plus one lane per ADC, halved until at most 8192 bits.
    - Weight-gradient grid (Chip.cpp:378-420, WeightGradientUnit.cpp:86-87): arrays of
      ``gradient.array_rows`` positions × ``array_cols`` input bits, as many as the largest
      layer input fills (whole arrays, at least one).
    """
    nb = hw.dac.input_bits
    sa = hw.xbar.rows * hw.xbar.cols
    ref = max(range(len(io)), key=lambda i: (io[i].input_volume, -i)) if io else 0
    input_bits = nb * (io[ref].input_volume if io else 0)
    batch_bits = max(1, math.ceil(math.log2(batch))) if batch > 1 else 1
    weight_bits = hw.xbar.weight_bits + (1 if hw.xbar.cells_per_weight == 1 else 0)
    columns = hw.xbar.cells_per_weight * -(-weight_bits // hw.xbar.cell_bits)  # per weight
    overhead = sa * columns * batch_bits
    parallel = overhead // (sa * weight_bits)
    while overhead < input_bits:
        overhead *= 2
        parallel *= 2
    bus = 0
    if plan.mode == "network":
        cpa = hw.adc.cols_per_adc
        side_nm = math.ceil(math.sqrt(plan.novel_pes)) * plan.novel_pe_side
        for p in plan.layers:
            w = side_nm if p.kind == "novel" else plan.conventional_tile_side
            bus += w + w // cpa
        while bus > 8192:
            bus //= 2
    g = hw.gradient
    grid = (1, 1)
    if io:
        grid = (max(1, io[ref].positions // g.array_rows),
                max(1, io[ref].in_channels * nb // g.array_cols))
    gbits = g.bits
    if gbits == "auto":      # the grid's sense amps, input bits and its adder tree over rows
        gbits = g.adc_bits + nb + (math.ceil(math.log2(grid[0])) if grid[0] > 1 else 0)
    units = ChipUnits(input_bits=input_bits, overhead_bits=overhead,
                      write_parallel=max(1, parallel), bus_bits=bus, gradient_grid=grid,
                      gradient_bits=int(gbits))
    return dataclasses.replace(plan, units=units)

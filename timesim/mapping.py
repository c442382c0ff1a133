"""Layer matrices onto crossbar tiles (DESIGN §1): row blocks × column tiles.

A weight takes ``cells_per_weight`` cells (2: differential pair G+ − G−) times
⌈weight_bits / cell_bits⌉ bit slices, in adjacent columns of the same row. A layer of
rows × cols weights therefore needs rows × (cols · cells_per_weight · slices) cells: ⌈rows / X⌉
row blocks (X = ``xbar.rows``) by ⌈physical columns / Y⌉ column tiles (Y = ``xbar.cols``).
All tiles of a row block share its wordlines, so a matrix row lives on one physical row of its
row block, and ARS moves rows only inside a row block.

Duplication (``mapping.duplicate``): a layer may be copied into spare crossbars so that copies
take input vectors in parallel (NeuroSim V2.1's novel mapping). ``auto`` gives each layer whole
tiles (``chip.xbars_per_tile`` crossbars each) and fills them with as many copies as fit, never
more copies than the layer has input vectors per iteration; if the chip is then too small, copies
are taken back from the layer with the most until it fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import HwConfig
from .errors import SimulationError
from .trace.format import LayerInfo


@dataclass(frozen=True)
class LayerMapping:
    name: str
    rows: int
    cols: int
    slices: int               # bit slices per weight
    cells_per_weight: int     # physical cells per weight (pair × slices)
    phys_cols: int            # cols × cells_per_weight
    row_blocks: int
    col_tiles: int
    vectors: int              # input vectors per iteration (batch × positions)
    positions: int            # input vectors per sample: the manifest's vectors_per_sample,
                              # else output positions (conv2d) or 1 (linear)
    copies: int = 1           # weight copies (duplication)
    kernel_rows: int = 1      # kh for conv2d: an input row is fetched once per kernel row
    pool: int = 1             # pooling window area after the layer (1: none)
    activity: float = 0.5     # fraction of input bits that are 1
    xbars_per_tile: int = 1

    @property
    def tiles(self) -> int:
        """Crossbars one copy of the layer occupies."""
        return self.row_blocks * self.col_tiles

    @property
    def arrays(self) -> int:
        """Crossbars of all copies."""
        return self.tiles * self.copies

    @property
    def chip_tiles(self) -> int:
        """Tiles (of ``chip.xbars_per_tile`` crossbars) the layer's copies occupy."""
        return -(-self.arrays // self.xbars_per_tile)

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def phys_cells(self) -> int:
        return self.rows * self.phys_cols


@dataclass(frozen=True)
class NetworkMapping:
    layers: tuple[LayerMapping, ...]
    crossbars_needed: int
    crossbars_available: int
    multiplexed: bool
    batch_size: int

    @property
    def resident_fraction(self) -> float:
        return min(1.0, self.crossbars_available / self.crossbars_needed)

    def to_dict(self) -> dict:
        return {"crossbars_needed": self.crossbars_needed,
                "crossbars_available": self.crossbars_available,
                "multiplexed": self.multiplexed, "batch_size": self.batch_size,
                "by_layer": {m.name: {"row_blocks": m.row_blocks, "col_tiles": m.col_tiles,
                                      "tiles": m.tiles, "copies": m.copies,
                                      "crossbars": m.arrays, "chip_tiles": m.chip_tiles,
                                      "input_activity": m.activity, "pool": m.pool,
                                      "slices": m.slices,
                                      "cells_per_weight": m.cells_per_weight,
                                      "vectors_per_iteration": m.vectors}
                             for m in self.layers}}


def weight_slices(hw: HwConfig) -> int:
    """Cells (bit slices) per weight side: ``weight_bits`` are magnitude bits; a differential
    pair carries the sign in its two sides, an offset column needs one more bit."""
    x = hw.xbar
    bits = x.weight_bits + (1 if x.cells_per_weight == 1 else 0)
    return math.ceil(bits / x.cell_bits)


def cells_per_weight(hw: HwConfig) -> tuple[int, int]:
    """(sides, slices) of a weight's physical cells: 2 sides for a differential pair, 1 for an
    offset column."""
    return (2 if hw.xbar.cells_per_weight == 2 else 1), weight_slices(hw)


def pool_after(layers: Sequence[LayerInfo], i: int) -> int:
    """Pooling window area after layer i: the manifest's ``pool``, else read off the geometry
    (the next conv layer's input is smaller than this layer's output by an integer factor,
    e.g. 2x2 max-pool: 4)."""
    layer = layers[i]
    if layer.pool is not None:
        return layer.pool[0] * layer.pool[1]
    if layer.kind != "conv2d" or layer.output_hw is None or i + 1 >= len(layers):
        return 1
    nxt = layers[i + 1]
    if nxt.kind != "conv2d" or nxt.input_hw is None:
        return 1
    (ho, wo), (hi, wi) = layer.output_hw, nxt.input_hw
    if hi < ho and wi < wo and ho % hi == 0 and wo % wi == 0:
        return (ho // hi) * (wo // wi)
    return 1


def map_layer(layer: LayerInfo, hw: HwConfig, batch: int, copies: int = 1,
              pool: int = 1) -> LayerMapping:
    x = hw.xbar
    slices = weight_slices(hw)
    cpw = x.cells_per_weight * slices
    phys_cols = layer.cols * cpw
    positions = 1
    if layer.vectors_per_sample is not None:         # tokens of a sequence (DESIGN §10)
        positions = layer.vectors_per_sample
    elif layer.kind == "conv2d" and layer.output_hw is not None:
        positions = layer.output_hw[0] * layer.output_hw[1]
    activity = (layer.input_activity if layer.input_activity is not None
                else hw.dac.input_activity)
    kh = layer.kernel[0] if layer.kind == "conv2d" and layer.kernel else 1
    return LayerMapping(name=layer.name, rows=layer.rows, cols=layer.cols, slices=slices,
                        cells_per_weight=cpw, phys_cols=phys_cols,
                        row_blocks=math.ceil(layer.rows / x.rows),
                        col_tiles=math.ceil(phys_cols / x.cols),
                        vectors=batch * positions, positions=positions, copies=copies,
                        kernel_rows=kh, pool=pool, activity=float(activity),
                        xbars_per_tile=hw.chip.xbars_per_tile)


def _copies(base: Sequence[LayerMapping], hw: HwConfig) -> list[int]:
    dup = hw.mapping.duplicate
    if dup == "none":
        return [1] * len(base)
    if dup != "auto":
        return [int(dup)] * len(base)
    per_tile = hw.chip.xbars_per_tile
    copies = []
    for m in base:
        tiles = -(-m.tiles // per_tile)
        copies.append(max(1, min(tiles * per_tile // m.tiles, m.vectors)))
    capacity = hw.chip.crossbars
    while sum(c * m.tiles for c, m in zip(copies, base)) > capacity and max(copies) > 1:
        i = max(range(len(copies)), key=lambda j: (copies[j], -j))
        copies[i] -= 1
    return copies


def map_network(layers: Sequence[LayerInfo], hw: HwConfig, batch_size: int) -> NetworkMapping:
    """Map every layer; a network larger than the chip is an error unless ``chip.multiplex``."""
    batch = max(1, batch_size)
    pools = [pool_after(layers, i) for i in range(len(layers))]
    base = [map_layer(layer, hw, batch, 1, p) for layer, p in zip(layers, pools)]
    copies = _copies(base, hw)
    mapped = tuple(map_layer(layer, hw, batch, c, p)
                   for layer, c, p in zip(layers, copies, pools))
    needed = sum(m.arrays for m in mapped)
    available = hw.chip.crossbars
    if needed > available and not hw.chip.multiplex:
        raise SimulationError(
            f"chip.crossbars: the network needs {needed} crossbars of {hw.xbar.rows}x"
            f"{hw.xbar.cols}, the chip has {available}; raise chip.crossbars or set "
            f"chip.multiplex=true to time-multiplex (reprogramming each iteration)")
    return NetworkMapping(layers=mapped, crossbars_needed=needed, crossbars_available=available,
                          multiplexed=needed > available, batch_size=batch)

"""Layer matrices onto crossbar tiles (DESIGN §1): row blocks × column tiles.

A weight takes ``cells_per_weight`` cells (2: differential pair G+ − G−) times
⌈weight_bits / cell_bits⌉ bit slices, in adjacent columns of the same row. A layer of
rows × cols weights therefore needs rows × (cols · cells_per_weight · slices) cells: ⌈rows / X⌉
row blocks (X = ``xbar.rows``) by ⌈physical columns / Y⌉ column tiles (Y = ``xbar.cols``).
All tiles of a row block share its wordlines, so a matrix row lives on one physical row of its
row block, and ARS moves rows only inside a row block.
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
    vectors: int              # input vectors per iteration (batch × output positions)
    positions: int            # output positions per sample (1 for linear)

    @property
    def tiles(self) -> int:
        return self.row_blocks * self.col_tiles

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
                                      "tiles": m.tiles, "slices": m.slices,
                                      "cells_per_weight": m.cells_per_weight,
                                      "vectors_per_iteration": m.vectors}
                             for m in self.layers}}


def weight_slices(hw: HwConfig) -> int:
    """Cells (bit slices) per weight side: ``weight_bits`` are magnitude bits; a differential
    pair carries the sign in its two sides, an offset column needs one more bit."""
    x = hw.xbar
    bits = x.weight_bits + (1 if x.cells_per_weight == 1 else 0)
    return math.ceil(bits / x.cell_bits)


def map_layer(layer: LayerInfo, hw: HwConfig, batch: int) -> LayerMapping:
    x = hw.xbar
    slices = weight_slices(hw)
    cpw = x.cells_per_weight * slices
    phys_cols = layer.cols * cpw
    positions = 1
    if layer.kind == "conv2d" and layer.output_hw is not None:
        positions = layer.output_hw[0] * layer.output_hw[1]
    return LayerMapping(name=layer.name, rows=layer.rows, cols=layer.cols, slices=slices,
                        cells_per_weight=cpw, phys_cols=phys_cols,
                        row_blocks=math.ceil(layer.rows / x.rows),
                        col_tiles=math.ceil(phys_cols / x.cols),
                        vectors=batch * positions, positions=positions)


def map_network(layers: Sequence[LayerInfo], hw: HwConfig, batch_size: int) -> NetworkMapping:
    """Map every layer; a network larger than the chip is an error unless ``chip.multiplex``."""
    batch = max(1, batch_size)
    mapped = tuple(map_layer(layer, hw, batch) for layer in layers)
    needed = sum(m.tiles for m in mapped)
    available = hw.chip.crossbars
    if needed > available and not hw.chip.multiplex:
        raise SimulationError(
            f"chip.crossbars: the network needs {needed} crossbars of {hw.xbar.rows}x"
            f"{hw.xbar.cols}, the chip has {available}; raise chip.crossbars or set "
            f"chip.multiplex=true to time-multiplex (reprogramming each iteration)")
    return NetworkMapping(layers=mapped, crossbars_needed=needed, crossbars_available=available,
                          multiplexed=needed > available, batch_size=batch)

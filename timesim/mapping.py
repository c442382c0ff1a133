"""Layer matrices onto crossbar tiles (DESIGN §1): row blocks × column tiles.

A weight takes ``cells_per_weight`` cells (2: differential pair G+ − G−) times
⌈weight_bits / cell_bits⌉ bit slices, in adjacent columns of the same row. A layer of
rows × cols weights therefore needs rows × (cols · cells_per_weight · slices) cells: ⌈rows / X⌉
row blocks (X = ``xbar.rows``) by ⌈physical columns / Y⌉ column tiles (Y = ``xbar.cols``).
All tiles of a row block share its wordlines, so a matrix row lives on one physical row of its
row block, and ARS moves rows only inside a row block.

Where a layer sits on the chip and how many copies it has (copies take input vectors in
parallel) is the floorplan's (``floorplan.py``): ``chip.floorplan: fixed`` with
``mapping.duplicate``, or ``network``, NeuroSim V2.1's tiles and speed-ups. The floorplan changes
the costs (copies, tiles, area, data paths), not the row blocks above, which are what the
update policies and ARS see (DESIGN §1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import HwConfig
from .errors import SimulationError
from .floorplan import Floorplan, LayerIO, LayerShape, plan_fixed, plan_network, size_units
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
    chip_tiles: int = 1       # tiles the layer's copies occupy (the floorplan's placement)
    kernel_area: int = 1      # kh·kw for conv2d
    in_channels: int = 0      # C_in (rows for linear)
    placement: str = "fixed"  # the floorplan's tile kind: fixed | novel | conventional
    copy_grid: tuple[int, int] = (1, 1)   # copies along rows and columns (network floorplan)
    attention_macs: int = 0   # MACs per iteration of the attention products charged to the
                              # layer (its module's out_proj; ``attention_work``)

    @property
    def tiles(self) -> int:
        """Crossbars one copy of the layer occupies."""
        return self.row_blocks * self.col_tiles

    @property
    def arrays(self) -> int:
        """Crossbars of all copies."""
        return self.tiles * self.copies

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def programmed_copies(self, rule: str, pe_grid: int) -> int:
        """Copies a write programs: all of them, or (``neurosim``, on a network floorplan)
        NeuroSim V2.1's accounting: every copy on a novel tile (Tile.cpp:739) or on a
        conventional tile whose PEs all hold copies (Tile.cpp:382-413), only the original
        elsewhere. A fixed floorplan has no such tiles: every copy."""
        if rule == "all" or self.placement in ("novel", "fixed"):
            return self.copies
        if self.placement == "conventional" and min(self.copy_grid) >= pe_grid:
            return self.copies
        return 1

@dataclass(frozen=True)
class NetworkMapping:
    layers: tuple[LayerMapping, ...]
    crossbars_needed: int
    crossbars_available: int
    multiplexed: bool
    batch_size: int
    floorplan: Floorplan
    parallel_auto: bool = False
    parallel_set: int = 1

    @property
    def write_parallel(self) -> int:
        """Arrays programmed at once chip-wide: ``write.parallel_arrays``, or (auto) as
        NeuroSim's Chip.cpp sizes it for this network and batch."""
        return self.floorplan.units.write_parallel if self.parallel_auto else self.parallel_set

    @property
    def attention(self) -> bool:
        """Whether the attention unit times products of this network (``attention_work``)."""
        return any(m.attention_macs for m in self.layers)

    def to_dict(self) -> dict:
        return {"crossbars_needed": self.crossbars_needed,
                "crossbars_available": self.crossbars_available,
                "multiplexed": self.multiplexed, "batch_size": self.batch_size,
                "floorplan": {**self.floorplan.to_dict(),
                              "write_parallel_arrays": self.write_parallel},
                "by_layer": {m.name: {"row_blocks": m.row_blocks, "col_tiles": m.col_tiles,
                                      "tiles": m.tiles, "copies": m.copies,
                                      "crossbars": m.arrays, "chip_tiles": m.chip_tiles,
                                      "placement": m.placement,
                                      "input_activity": m.activity, "pool": m.pool,
                                      "slices": m.slices,
                                      "cells_per_weight": m.cells_per_weight,
                                      "vectors_per_iteration": m.vectors,
                                      **({"attention_macs_per_iteration": m.attention_macs}
                                         if m.attention_macs else {})}
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
    e.g. 2x2 max-pool: 4; or the next linear layer flattens fewer positions than this layer
    outputs)."""
    layer = layers[i]
    if layer.pool is not None:
        return layer.pool[0] * layer.pool[1]
    if layer.kind != "conv2d" or layer.output_hw is None or i + 1 >= len(layers):
        return 1
    nxt = layers[i + 1]
    ho, wo = layer.output_hw
    if nxt.kind == "linear":
        # a flattened map: the linear layer's inputs are C_out x h x w of a pooled output
        # (a linear layer applied per token, e.g. after a patch embedding, flattens nothing)
        if getattr(nxt, "vectors_per_sample", None):
            return 1
        if layer.cols and nxt.rows % layer.cols == 0:
            area = nxt.rows // layer.cols
            if 0 < area < ho * wo and (ho * wo) % area == 0:
                return (ho * wo) // area
        return 1
    if nxt.kind != "conv2d" or nxt.input_hw is None:
        return 1
    hi, wi = nxt.input_hw
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
    conv = layer.kind == "conv2d" and bool(layer.kernel)
    kh = layer.kernel[0] if conv else 1
    area = layer.kernel[0] * layer.kernel[1] if conv else 1
    return LayerMapping(name=layer.name, rows=layer.rows, cols=layer.cols, slices=slices,
                        cells_per_weight=cpw, phys_cols=phys_cols,
                        row_blocks=math.ceil(layer.rows / x.rows),
                        col_tiles=math.ceil(phys_cols / x.cols),
                        vectors=batch * positions, positions=positions, copies=copies,
                        kernel_rows=kh, pool=pool, activity=float(activity),
                        kernel_area=area, in_channels=max(1, layer.rows // area))


def attention_work(layers: Sequence[LayerInfo], left_out: Sequence[dict], hw: HwConfig
                   ) -> tuple[dict[str, int], list[dict], list[dict]]:
    """Which of a manifest's ``left_out`` entries the attention unit times (DESIGN §10).

    An attention module's products (scores Q·Kᵀ, context A·V) run between its input and its
    output projection, so they are charged to the layer ``<module>.out_proj``; other
    activation x activation products (a Swin window attention, a hand-written one) to the
    entry's ``layer``, the mapped layer whose forward followed them. Timed when that layer
    is mapped, is not the first layer (which has no backward pass to take the products'
    gradients) and the chip has an attention unit (``attention.units`` > 0). Returns
    ({layer: MACs per iteration}, the timed entries with their ``layer``, the entries still
    left out)."""
    names = {layer.name for layer in layers[1:]}
    by_layer: dict[str, int] = {}
    timed, left = [], []
    for d in left_out:
        layer = d.get("layer") or f"{d.get('name', '')}.out_proj"
        if hw.attention.units > 0 and layer in names and d.get("macs", 0) > 0:
            by_layer[layer] = by_layer.get(layer, 0) + int(d["macs"])
            timed.append({**dict(d), "layer": layer})
        else:
            left.append(dict(d))
    return by_layer, timed, left


def map_network(layers: Sequence[LayerInfo], hw: HwConfig, batch_size: int,
                left_out: Sequence[dict] = ()) -> NetworkMapping:
    """Map every layer and place it on the chip (``floorplan``). With ``chip.floorplan: fixed``
    a network larger than the chip is an error unless ``chip.multiplex``. ``left_out``: the
    manifest's digital work; the attention products ``attention_work`` times are charged to
    their out_proj layers (``LayerMapping.attention_macs``)."""
    batch = max(1, batch_size)
    pools = [pool_after(layers, i) for i in range(len(layers))]
    macs = attention_work(layers, left_out, hw)[0]
    base = [dataclasses.replace(map_layer(layer, hw, batch, 1, p),
                                attention_macs=macs.get(layer.name, 0))
            for layer, p in zip(layers, pools)]
    if hw.chip.floorplan == "network":
        plan = plan_network([LayerShape(m.name, m.rows, m.phys_cols, m.kernel_area,
                                        m.in_channels) for m in base], hw)
    else:
        plan = plan_fixed([m.tiles for m in base], [m.vectors for m in base], hw)
    io = []
    for layer, m in zip(layers, base):
        hw_in = layer.input_hw if layer.kind == "conv2d" and layer.input_hw else None
        values = hw_in[0] * hw_in[1] if hw_in else m.positions      # a linear layer's tokens
        io.append(LayerIO(input_volume=values * m.in_channels,
                          positions=m.positions, in_channels=m.in_channels))
    plan = size_units(plan, io, hw, batch)
    mapped = tuple(dataclasses.replace(m, copies=p.copies, chip_tiles=p.tiles,
                                       placement=p.kind, copy_grid=p.copy_grid)
                   for m, p in zip(base, plan.layers))
    needed = sum(m.arrays for m in mapped)
    available = plan.crossbars
    if plan.mode == "fixed" and needed > available and not hw.chip.multiplex:
        raise SimulationError(
            f"chip.crossbars: the network needs {needed} crossbars of {hw.xbar.rows}x"
            f"{hw.xbar.cols}, the chip has {available}; raise chip.crossbars or set "
            f"chip.multiplex=true to time-multiplex (reprogramming each iteration)")
    return NetworkMapping(layers=mapped, crossbars_needed=needed, crossbars_available=available,
                          multiplexed=plan.mode == "fixed" and needed > available, batch_size=batch,
                          floorplan=plan, parallel_auto=hw.write.parallel_arrays == "auto",
                          parallel_set=(1 if hw.write.parallel_arrays == "auto"
                                        else int(hw.write.parallel_arrays)))

"""Chip area (report.json ``area_mm2``): units counted from the floorplan × area per unit.

What is counted is the whole chip as the floorplan builds it (``floorplan.py``): with
``chip.floorplan: fixed`` the configured ``chip.crossbars`` in their tiles, not only the crossbars
a network uses; with ``network`` the tiles and crossbars NeuroSim V2.1 places for the network.
Per crossbar: the array, its periphery, a DAC per row and per column and an ADC with its
shift-add per ``adc.cols_per_adc`` lines on both sides (forward reads columns, backward reads
rows: TIME, NeuroSim V2.1 training mode), and its CE share; per tile: buffer, activation and
pooling units, interconnect port; per chip: global buffer, weight-gradient units, attention
units (for a network with attention products to time), the rest.
A network-sized chip adds what NeuroSim sizes to the network (Chip.cpp:378-443): the global
buffer's bits, the global H-tree (bus bits × the chip's side) and the weight-gradient grid
with its accumulator.
"""

from __future__ import annotations

import math

from .config import HwConfig
from .floorplan import Floorplan


def area_report(hw: HwConfig, plan: Floorplan | None = None, batch: int = 1,
                write_parallel: int | None = None, attention: bool = False) -> dict:
    """``attention``: the network has attention products the chip times, so the chip has its
    ``attention.units`` (a network without them is reported without the units)."""
    x = hw.xbar
    if plan is None:
        n = hw.chip.crossbars
        tiles = -(-n // hw.chip.xbars_per_tile)
    else:
        n, tiles = plan.crossbars, plan.tiles
    adcs = n * (-(-x.cols // hw.adc.cols_per_adc) + -(-x.rows // hw.adc.cols_per_adc))
    m2 = {
        "crossbar": n * x.area_m2,
        "periphery": n * x.periphery_area_m2,
        "dac": n * (x.rows + x.cols) * hw.dac.area_m2,
        "adc": adcs * hw.adc.area_m2,
        "accumulation": adcs * hw.accumulation.area_m2,
        "ce": n * hw.ce.area_m2,
        "buffer": tiles * hw.buffer.area_m2,
        "activation": tiles * hw.activation.area_m2,
        "pooling": tiles * hw.pooling.area_m2,
        "interconnect": tiles * hw.interconnect.area_m2,
        "global_buffer": hw.global_buffer.area_m2,
        "gradient": hw.gradient.units * hw.gradient.area_m2,
        **({"attention": hw.attention.units * hw.attention.area_m2} if attention else {}),
        "other": hw.chip.other_area_m2,
    }
    units = {"crossbars": n, "tiles": tiles, "adcs": adcs,
             **({"attention_units": hw.attention.units} if attention else {})}
    u = plan.units if plan is not None else None
    if u is not None and plan.mode == "network":
        m2["global_buffer"] += u.buffer_bits * hw.global_buffer.bit_area_m2
        units["global_buffer_bits"] = u.buffer_bits
    if u is not None and hw.gradient.model == "sram-grid":
        arrays = u.gradient_grid[0] * u.gradient_grid[1]
        # the accumulator: write_parallel crossbars' worth of adders of the gradient's bits
        # plus the batch's carry bits (Chip.cpp:437)
        wp = u.write_parallel if write_parallel is None else write_parallel
        acc_bits = (wp * hw.xbar.rows * hw.xbar.cols
                    * (u.gradient_bits + max(1, math.ceil(math.log2(max(2, batch))))))
        m2["gradient"] = hw.gradient.units * (arrays * hw.gradient.array_area_m2
                                              + acc_bits * hw.gradient.accumulator_bit_area_m2)
        units.update(gradient_arrays=arrays, gradient_accumulator_bits=acc_bits)
    if u is not None and plan.mode == "network" and u.bus_bits:
        # the global H-tree: bus bits across the chip's side (the rest of the chip's area)
        side_m = math.sqrt(sum(m2.values()))
        m2["interconnect"] += u.bus_bits * hw.interconnect.wire_pitch_um * 1e-6 * side_m
        units["global_bus_bits"] = u.bus_bits
    by = {k: v * 1e6 for k, v in m2.items()}
    return {"total": sum(by.values()), "by_component": by, "units": units}

"""Chip area (report.json ``area_mm2``): units counted from the hwconfig × area per unit.

What is counted is the whole chip as configured (``chip.crossbars``, its tiles), not only the
crossbars a network uses. Per crossbar: the array, a DAC per row and per column and an ADC with
its shift-add per ``adc.cols_per_adc`` lines on both sides (forward reads columns, backward reads
rows: TIME, NeuroSim V2.1 training mode), and its CE share; per tile: buffer, activation and
pooling units, interconnect port; per chip: global buffer, weight-gradient units, the rest.
"""

from __future__ import annotations

from .config import HwConfig


def area_report(hw: HwConfig) -> dict:
    x = hw.xbar
    n = hw.chip.crossbars
    tiles = -(-n // hw.chip.xbars_per_tile)
    adcs = n * (-(-x.cols // hw.adc.cols_per_adc) + -(-x.rows // hw.adc.cols_per_adc))
    m2 = {
        "crossbar": n * x.area_m2,
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
        "other": hw.chip.other_area_m2,
    }
    by = {k: v * 1e6 for k, v in m2.items()}
    return {"total": sum(by.values()), "by_component": by,
            "units": {"crossbars": n, "tiles": tiles, "adcs": adcs}}

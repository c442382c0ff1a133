"""Hardware config: versioned YAML -> frozen dataclasses (DESIGN §5).

Every hwconfig is read as an overlay on the bundled ``time-default.yaml``: a key it omits keeps
the default chip's value, so the defaults (and the sources they cite) live in one file.
Quantities are written with units (``pulse_latency: 50 ns``) or with a unit-suffixed key
(``pulse_latency_ns: 50``); inside the code they are SI floats in attributes named with their SI
unit (``pulse_latency_s``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import yamlio
from .errors import ConfigError
from .units import KINDS, SUFFIXES, parse_integer, parse_number, parse_quantity, split_suffix

CONFIG_VERSION = 1
SELECTIONS = ("dense", "topk", "sgs-row", "sgs-element", "sgs")
DUPLICATE = ("auto", "none")
WEAR_LEVELING = ("none", "ars", "ars-random")


def _f(kind: str, check: str = "", choices: tuple = (), doc: str = "") -> Any:
    return field(metadata={"kind": kind, "check": check, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class Clock:
    frequency_hz: float = _f("frequency", "pos", doc="chip clock; cycles = seconds x frequency")


@dataclass(frozen=True)
class Chip:
    crossbars: int = _f("int", "pos", doc="crossbars on the chip (capacity for weights)")
    multiplex: bool = _f("bool", doc="time-multiplex a network that does not fit")
    xbars_per_tile: int = _f("int", "pos", doc="crossbars per tile (one tile buffer, one "
                             "interconnect port, one accumulation/activation/pooling block)")
    other_area_m2: float = _f("area", "nonneg", doc="chip-level area not in any counted unit "
                              "(off-chip links, I/O)")
    floorplan: str = _f("str", choices=("fixed", "network"), doc="fixed: chip.crossbars in "
                        "tiles of chip.xbars_per_tile, the same chip for every network; network: "
                        "tiles, PEs and copies placed for the network as NeuroSim V2.1 places "
                        "them (chip.crossbars and xbars_per_tile are then not used)")


@dataclass(frozen=True)
class Mapping:
    duplicate: Any = _f("dup", doc="weight copies per layer: auto (fill the layer's tiles, "
                        "NeuroSim's novel mapping), none, or a number N; with "
                        "chip.floorplan=network the copies are NeuroSim's speed-ups")
    scheme: str = _f("str", choices=("novel", "conventional"), doc="NeuroSim's novelMapping: "
                     "novel: the most frequent kernel's layers on tiles of one PE per kernel "
                     "offset, each input fetched once; conventional: every layer's unrolled "
                     "matrix on conventional tiles, each input fetched once per kernel offset")


@dataclass(frozen=True)
class EngineCfg:
    pipeline: str = _f("str", choices=("none", "layer"), doc="none: layer by layer; layer: "
                       "waves of the batch stream through the layers (PipeLayer/ISAAC)")
    waves: int = _f("int", "pos", doc="the batch moves through the chip in this many waves "
                    "(one event per wave and stage; with pipeline=layer, the pipeline depth)")


@dataclass(frozen=True)
class Xbar:
    rows: int = _f("int", "pos", doc="wordlines per crossbar (row block height)")
    cols: int = _f("int", "pos", doc="bitlines per crossbar (column tile width)")
    cell_bits: int = _f("int", "pos", doc="bits stored per cell")
    weight_bits: int = _f("int", "pos", doc="bits per weight, sliced across cells")
    cells_per_weight: int = _f("int", "pos", doc="1: offset column, 2: differential pair")
    r_on_ohm: float = _f("resistance", "pos", doc="low-resistance state")
    r_off_ohm: float = _f("resistance", "pos", doc="high-resistance state")
    read_voltage_v: float = _f("voltage", "pos", doc="read voltage")
    read_latency_s: float = _f("time", "pos", doc="one array read (MVM) pulse")
    read_energy_j: float = _f("energy", "nonneg", doc="energy of one cell read whose input "
                              "bit is 1 (cells with input 0 draw no current)")
    program_sigma: float = _f("float", "nonneg", doc="programming variation: relative sigma "
                              "of each programmed conductance")
    area_m2: float = _f("area", "nonneg", doc="one crossbar array with its cells")
    array_read_energy_j: float = _f("energy", "nonneg", doc="chip.floorplan=network: one read "
                                    "of one crossbar for one input slice (switch matrices, "
                                    "decoders, multiplexers)")
    periphery_area_m2: float = _f("area", "nonneg", doc="per crossbar: its row and column "
                                  "switch matrices, decoders, multiplexers and local registers "
                                  "(where a chip counts them apart from the tile buffer)")


@dataclass(frozen=True)
class Dac:
    bits: int = _f("int", "pos", doc="input bits converted per slice (1 = bit-serial)")
    input_bits: int = _f("int", "pos", doc="activation/error precision fed to the crossbar")
    latency_s: float = _f("time", "nonneg", doc="one conversion")
    energy_j: float = _f("energy", "nonneg", doc="one conversion")
    input_activity: float = _f("float", "unit01", doc="fraction of input bits that are 1 "
                               "when the trace gives no input_activity for a layer")
    area_m2: float = _f("area", "nonneg", doc="one DAC (one line)")


@dataclass(frozen=True)
class Adc:
    bits: int = _f("int", "pos", doc="resolution: what the analog model quantizes to "
                   "(docs/analog.md) and the adder widths of a network floorplan; the cost of a "
                   "conversion is adc.latency, adc.energy and adc.area as given")
    cols_per_adc: int = _f("int", "pos", doc="columns multiplexed onto one ADC")
    range: Any = _f("range", doc="auto: each ADC's full scale calibrated on the partial sums "
                    "(per input and weight slice, mean-squared-error optimal clip); a number: "
                    "the full scale as a fraction of the largest possible column current")
    read_noise: float = _f("float", "nonneg", doc="read noise: sigma of each column current, "
                           "as a fraction of the largest possible column current (absolute: "
                           "it does not shrink with the ADC range)")
    latency_s: float = _f("time", "nonneg", doc="one conversion")
    energy_j: float = _f("energy", "nonneg", doc="one conversion")
    area_m2: float = _f("area", "nonneg", doc="one ADC")


@dataclass(frozen=True)
class Gradient:
    macs_per_cycle: int = _f("int", "pos", doc="multiply-accumulates per cycle of one "
                             "weight-gradient unit")
    units: int = _f("int", "pos", doc="weight-gradient units on the chip, shared by all layers "
                    "(a layer's gradient occupies one unit)")
    mac_energy_j: float = _f("energy", "nonneg", doc="one multiply-accumulate")
    storage: str = _f("str", choices=("sram", "dram"), doc="where the batch's weight gradient "
                      "accumulates: on chip, or in DRAM (to DRAM and back once per sample, as "
                      "NeuroSim V2.1)")
    bits: Any = _f("auto_int", doc="bits of one weight-gradient value in storage; auto "
                   "(gradient.model=sram-grid): the grid's output, adc_bits + input bits + one "
                   "per adder stage over the grid's rows (WeightGradientUnit.cpp:134-135)")
    adc_bits: int = _f("int", "pos", doc="sram-grid: bits of the grid's sense amplifiers "
                       "(NeuroSim's levelOutputWG = 2^adc_bits)")
    area_m2: float = _f("area", "nonneg", doc="one weight-gradient unit")
    model: str = _f("str", choices=("throughput", "sram-grid"), doc="throughput: "
                    "macs_per_cycle for every layer; sram-grid: NeuroSim V2.1's grid of SRAM "
                    "arrays sized by the largest layer input, whose speed per layer follows the "
                    "layer's shape (docs/architecture.md)")
    array_rows: int = _f("int", "pos", doc="sram-grid: rows of one SRAM array (input positions)")
    array_cols: int = _f("int", "pos", doc="sram-grid: columns of one SRAM array (input bits)")
    read_latency_s: float = _f("time", "nonneg", doc="sram-grid: one output channel's error "
                               "streamed through the grid (all its input bits)")
    load_latency_s: float = _f("time", "nonneg", doc="sram-grid: writing one kernel offset's "
                               "activations into the grid")
    accumulate_latency_s: float = _f("time", "nonneg", doc="sram-grid: one pass of the "
                                     "gradient accumulator (write.parallel_arrays x one "
                                     "array's cells at once)")
    accumulate_energy_j: float = _f("energy", "nonneg", doc="adding one weight's gradient of "
                                    "one sample into the batch's gradient")
    array_area_m2: float = _f("area", "nonneg", doc="sram-grid: one SRAM array with its "
                              "periphery (area = arrays x this + accumulator bits x "
                              "accumulator_bit_area; gradient.area is then not used)")
    accumulator_bit_area_m2: float = _f("area", "nonneg", doc="sram-grid: one bit of the "
                                        "gradient accumulator (an adder bit with its register)")


@dataclass(frozen=True)
class Attention:
    macs_per_cycle: int = _f("int", "pos", doc="multiply-accumulates per cycle of one attention "
                             "unit: the digital unit that computes attention's activation x "
                             "activation products (scores Q·Kᵀ, context A·V and their gradients)")
    units: int = _f("int", "nonneg", doc="attention units on the chip, shared by all attention "
                    "modules (a module's products occupy one unit); 0: none, the products are "
                    "reported as left out (report.json left_out)")
    mac_energy_j: float = _f("energy", "nonneg", doc="one multiply-accumulate")
    area_m2: float = _f("area", "nonneg", doc="one attention unit (counted only for a network "
                        "whose attention products it times)")


@dataclass(frozen=True)
class Ce:
    compare_latency_s: float = _f("time", "nonneg", doc="one comparator-tree stage")
    compare_energy_j: float = _f("energy", "nonneg", doc="one magnitude comparison")
    tree_width: int = _f("int", "pos", doc="leaves of the comparator tree (values per step)")
    topk_units: int = _f("int", "pos", doc="parallel top-k units for conventional GS")
    counter_energy_j: float = _f("energy", "nonneg", doc="one row write-counter update")
    area_m2: float = _f("area", "nonneg", doc="the CE and row counters of one crossbar")


@dataclass(frozen=True)
class Write:
    drivers_per_xbar: int = _f("int", "pos", doc="cells programmed in parallel per crossbar")
    pulse_latency_s: float = _f("time", "pos", doc="one programming pulse")
    voltage_v: float = _f("voltage", "pos", doc="programming voltage")
    pulse_energy_j: float = _f("energy", "nonneg", doc="one programming pulse on one cell")
    phases: int = _f("int", "pos", doc="programming phases per row write (SET, RESET)")
    row_phase_energy_j: float = _f("energy", "nonneg", doc="one phase of one written row of one "
                                   "crossbar: charging the lines of its unselected columns")
    pulses_per_phase: int = _f("int", "pos", doc="pulses each written cell gets in each phase")
    verify_reads: int = _f("int", "nonneg", doc="read-verify steps after each write")
    parallel_arrays: Any = _f("auto_int", doc="arrays programmed at once, chip-wide (copies "
                              "of a layer take the same data and count once); auto: as NeuroSim "
                              "V2.1's Chip.cpp derives it from the largest layer input")
    copies: str = _f("str", choices=("all", "neurosim"), doc="which weight copies a write "
                     "programs: all (every copy holds the weights: physical), or neurosim "
                     "(NeuroSim V2.1's accounting: copies on novel tiles and on fully duplicated "
                     "conventional tiles, only the original elsewhere)")
    pulses: str = _f("str", choices=("fixed", "delta"), doc="fixed: every written cell takes "
                     "pulses_per_phase pulses; delta: ⌈|Δw| / step⌉, Δw = learning_rate x the "
                     "written (accumulated) gradient, step = weight_range / (2^weight_bits - 1)")
    learning_rate: float = _f("float", "pos", doc="write.pulses=delta: the optimizer's learning "
                              "rate that turns a written gradient into Δw")
    weight_range: float = _f("float", "pos", doc="write.pulses=delta: the largest |w| the "
                             "cells hold (the conductance range)")


@dataclass(frozen=True)
class Buffer:
    read_energy_j: float = _f("energy", "nonneg", doc="tile buffer: one byte read")
    write_energy_j: float = _f("energy", "nonneg", doc="tile buffer: one byte written")
    latency_s: float = _f("time", "nonneg", doc="tile buffer: one access")
    bytes_per_cycle: int = _f("int", "pos", doc="tile buffer bandwidth of one tile, bytes per "
                              "cycle (each bit is written then read)")
    accumulator_bits: int = _f("int", "pos", doc="bits per residual-accumulator entry")
    line_bits: int = _f("int", "pos", doc="chip.floorplan=network: bits per access of a tile "
                        "buffer line")
    register_clock_energy_j: float = _f("energy", "nonneg", doc="chip.floorplan=network: one "
                                        "clock of one bit of a PE's input or output registers")
    line_latency_s: float = _f("time", "nonneg", doc="chip.floorplan=network: one access of "
                               "one tile-buffer line")
    area_m2: float = _f("area", "nonneg", doc="the buffer of one tile")


@dataclass(frozen=True)
class GlobalBuffer:
    bits_per_cycle: Any = _f("auto_int", doc="chip-wide global-buffer bandwidth, bits per "
                             "cycle; auto (chip.floorplan=network): NeuroSim's register-file "
                             "cores of line_bits, as many working at once as the global bus "
                             "has line_bits-wide lanes, each bit written and read once")
    line_bits: int = _f("int", "pos", doc="bits per access of one buffer core (auto bandwidth)")
    line_latency_s: float = _f("time", "nonneg", doc="one access of one line (auto bandwidth)")
    bit_area_m2: float = _f("area", "nonneg", doc="area per bit of a buffer sized to the "
                            "network (chip.floorplan=network: the largest layer input plus "
                            "the gradient accumulator's overhead, as NeuroSim's Chip.cpp sizes "
                            "it); added to area")
    read_energy_j: float = _f("energy", "nonneg", doc="one byte read")
    write_energy_j: float = _f("energy", "nonneg", doc="one byte written")
    area_m2: float = _f("area", "nonneg", doc="the global buffer")


@dataclass(frozen=True)
class Interconnect:
    bits_per_cycle: int = _f("int", "pos", doc="bandwidth of one tile's port on the "
                             "inter-tile network (a layer on t tiles moves t times as much)")
    hop_latency_s: float = _f("time", "nonneg",
                              doc="one router/H-tree stage, paid once per layer stream")
    energy_per_bit_j: float = _f("energy", "nonneg", doc="one bit from the global buffer to "
                                 "a tile or back")
    area_m2: float = _f("area", "nonneg", doc="the network's share of one tile")
    chip_tree_energy_j: float = _f("energy", "nonneg", doc="chip.floorplan=network: one bit "
                                   "over one crossbar side of the chip's H-tree")
    novel_tile_tree_energy_j: float = _f("energy", "nonneg", doc="chip.floorplan=network: one "
                                         "bit over one crossbar side of a novel tile's H-tree")
    conventional_tile_tree_energy_j: float = _f("energy", "nonneg", doc="chip.floorplan=network:"
                                                " one bit over one crossbar side of a "
                                                "conventional tile's H-tree")
    pe_bus_energy_j: float = _f("energy", "nonneg", doc="chip.floorplan=network: one bit over "
                                "one crossbar side of a PE's input bus")
    wire_delay_ns_per_mm: float = _f("float", "nonneg", doc="chip.floorplan=network: delay of "
                                     "the H-trees' repeated wires per mm; a transfer takes its "
                                     "tree's root-to-leaf path (the tile and PE sides from "
                                     "the area model)")
    wire_pitch_um: float = _f("float", "nonneg", doc="chip.floorplan=network: area of the "
                              "global H-tree per bus bit per unit of chip side (um); routing "
                              "area = this x global bus bits x the side of the rest of the "
                              "chip")


@dataclass(frozen=True)
class Dram:
    bits_per_cycle: int = _f("int", "pos", doc="off-chip bandwidth, bits per cycle")
    energy_per_bit_j: float = _f("energy", "nonneg", doc="one bit read or written")


@dataclass(frozen=True)
class Accumulation:
    add_latency_s: float = _f("time", "nonneg", doc="one adder stage (shift-add, adder tree)")
    add_energy_j: float = _f("energy", "nonneg", doc="one addition of a partial sum")
    bit_energy_j: float = _f("energy", "nonneg", doc="chip.floorplan=network: one full-adder "
                             "bit of an adder tree")
    bit_latency_s: float = _f("time", "nonneg", doc="chip.floorplan=network: ripple delay of "
                              "one adder bit in the tile and chip adder trees")
    bits: int = _f("int", "pos", doc="width of a layer's outputs as the crossbars' shift-add "
                   "writes them to the tile buffer, before activation and pooling")
    area_m2: float = _f("area", "nonneg", doc="the shift-add of one ADC")


@dataclass(frozen=True)
class Activation:
    values_per_cycle: int = _f("int", "pos", doc="outputs one tile's activation units take "
                               "per cycle")
    energy_j: float = _f("energy", "nonneg", doc="one output activated (ReLU)")
    area_m2: float = _f("area", "nonneg", doc="the activation units of one tile")


@dataclass(frozen=True)
class Pooling:
    values_per_cycle: int = _f("int", "pos", doc="inputs one tile's pooling units take per "
                               "cycle")
    energy_j: float = _f("energy", "nonneg", doc="one input compared (max-pool)")
    area_m2: float = _f("area", "nonneg", doc="the pooling units of one tile")


@dataclass(frozen=True)
class Endurance:
    cycles: float = _f("float", "ge1", doc="mean writes a cell survives (at least one)")
    sigma: float = _f("float", "nonneg", doc="lognormal sigma of ln(endurance); 0 = fixed")
    seed: int = _f("int", "nonneg", doc="seed of the per-cell endurance draw")
    sa1_fraction: float = _f("float", "unit01", doc="fraction of worn-out cells stuck at "
                             "Gmax (SA1); the rest stick at Gmin (SA0)")
    failed_bound: float = _f("float", "unit", doc="failed-cell fraction that counts as a "
                             "layer's end of life")
    mode: str = _f("str", choices=("stuck", "gradual"), doc="stuck: a cell works until its "
                   "endurance, then sticks at Gmin or Gmax; gradual: its conductance window "
                   "also narrows before (Lammie et al. 2021 power law)")
    gradual_onset: float = _f("float", "unit", doc="endurance.mode=gradual: the fraction of its "
                              "endurance after which a cell's window starts to narrow")


@dataclass(frozen=True)
class Controller:
    selection: str = _f("str", choices=SELECTIONS, doc="update policy (DESIGN §2)")
    rct: int = _f("int", "pos", doc="row count threshold of the hybrid sgs policy")
    topk_density: float = _f("float", "unit", doc="fraction of entries topk writes")
    wear_leveling: str = _f("str", choices=WEAR_LEVELING, doc="wear levelling")
    interval: int = _f("int", "pos", doc="ARS interval SI in iterations")
    rows: int = _f("int", "pos", doc="ARS rows R swapped per row block (R/2 pairs)")
    seed: int = _f("int", "nonneg", doc="secret seed of ars-random")


SECTIONS: dict[str, type] = {
    "clock": Clock, "chip": Chip, "mapping": Mapping, "engine": EngineCfg, "xbar": Xbar,
    "dac": Dac, "adc": Adc, "accumulation": Accumulation, "activation": Activation,
    "pooling": Pooling, "gradient": Gradient, "attention": Attention, "ce": Ce, "write": Write,
    "buffer": Buffer,
    "global_buffer": GlobalBuffer, "interconnect": Interconnect, "dram": Dram,
    "endurance": Endurance, "controller": Controller,
}


@dataclass(frozen=True)
class HwConfig:
    """A chip: one frozen dataclass per YAML section, quantities in SI units."""

    version: int
    name: str
    clock: Clock
    chip: Chip
    mapping: Mapping
    engine: EngineCfg
    xbar: Xbar
    dac: Dac
    adc: Adc
    accumulation: Accumulation
    activation: Activation
    pooling: Pooling
    gradient: Gradient
    attention: Attention
    ce: Ce
    write: Write
    buffer: Buffer
    global_buffer: GlobalBuffer
    interconnect: Interconnect
    dram: Dram
    endurance: Endurance
    controller: Controller
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The resolved config in canonical keys; loading it back gives the same chip."""
        out: dict[str, Any] = {"version": self.version, "name": self.name}
        for sec in SECTIONS:
            out[sec] = dataclasses.asdict(getattr(self, sec))
        return out

    def replace(self, **sections: dict[str, Any]) -> HwConfig:
        """A copy with some canonical fields changed, e.g. ``replace(controller={"rows": 8})``."""
        raw = self.to_dict()
        for sec, values in sections.items():
            raw[sec].update(values)
        return _build(raw, self.source)


def _fields(sec: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[sec])}


def _resolve_key(sec: str, key: str, value: Any, where: str) -> tuple[str, Any]:
    """Map one YAML key/value of a section to (canonical attribute, checked SI value)."""
    fields = _fields(sec)
    path = f"{where}: {sec}.{key}"
    if not isinstance(key, str):
        raise ConfigError(f"{where}: {sec}: keys must be strings, got {key!r}")
    base, suffix = split_suffix(key)
    target = None
    if suffix is not None:
        kind, factor = SUFFIXES[suffix]
        for name, f in fields.items():
            if f.metadata["kind"] == kind and split_suffix(name)[0] == base:
                target = f
        if target is None:
            raise ConfigError(f"{path}: unknown key; {_known(sec)}")
        value = _number_string(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number in {suffix}, got {value!r}")
        si = float(value) * factor
    else:
        if key in fields and fields[key].metadata["kind"] not in KINDS:
            target = fields[key]
        else:
            for name, f in fields.items():
                if f.metadata["kind"] in KINDS and split_suffix(name)[0] == key:
                    target = f
            if target is None:
                raise ConfigError(f"{path}: unknown key; {_known(sec)}")
            kind = target.metadata["kind"]
            if not isinstance(value, str):
                raise ConfigError(f"{path}: give a unit, e.g. {key}: '{_eg(kind)}', "
                                  f"or use the key {key}_{_eg(kind).split()[1].lower()}")
            try:
                si = parse_quantity(value, kind)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
    if target.metadata["kind"] in KINDS:
        _check_number(si, target, path, shown=value)     # the error shows what was written
        return target.name, si
    return target.name, _check_plain(value, target, path)


def _eg(kind: str) -> str:
    return {"time": "50 ns", "energy": "8 pJ", "power": "1 mW", "frequency": "1 GHz",
            "resistance": "100 kohm", "voltage": "4 V", "area": "0.0012 mm2"}[kind]


def _known(sec: str) -> str:
    names = []
    for name, f in _fields(sec).items():
        names.append(split_suffix(name)[0] if f.metadata["kind"] in KINDS else name)
    return "expected one of: " + ", ".join(names)


def _check_number(x: float, f: dataclasses.Field, path: str, shown: Any = None) -> None:
    check = f.metadata["check"]
    got = x if shown is None else shown
    if not math.isfinite(x):
        raise ConfigError(f"{path}: must be finite, got {got!r}")
    if check == "pos" and not x > 0:
        raise ConfigError(f"{path}: must be positive, got {got!r}")
    if check == "nonneg" and not x >= 0:
        raise ConfigError(f"{path}: must be zero or positive, got {got!r}")
    if check == "unit" and not 0 < x <= 1:
        raise ConfigError(f"{path}: must be in (0, 1], got {got!r}")
    if check == "unit01" and not 0 <= x <= 1:
        raise ConfigError(f"{path}: must be in [0, 1], got {got!r}")
    if check == "ge1" and not x >= 1:
        raise ConfigError(f"{path}: must be at least 1, got {got!r}")


def _number_string(value: Any) -> Any:
    """PyYAML reads ``5e6``, ``1e-3`` (no dot, or no sign in the exponent) and ``2.5e3`` as
    strings; a user means the number (units.parse_number: the one number syntax)."""
    if isinstance(value, str):
        try:
            x = parse_number(value)
        except ValueError:
            return value
        try:
            return parse_integer(value)
        except ValueError:
            return x
    return value


def _check_plain(value: Any, f: dataclasses.Field, path: str) -> Any:
    kind = f.metadata["kind"]
    if kind == "float":
        value = _number_string(value)
    if kind == "range":
        value = _number_string(value)
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 < value <= 1:
            raise ConfigError(f"{path}: must be auto or a fraction in (0, 1], got {value!r}")
        return float(value)
    if kind == "auto_int":
        value = _number_string(value)
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 30:
            raise ConfigError(f"{path}: must be auto or a positive integer, got {value!r}")
        return int(value)
    if kind == "dup":
        value = _number_string(value)
        if value in DUPLICATE:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
            raise ConfigError(f"{path}: must be auto, none or a number of copies >= 1, "
                              f"got {value!r}")
        return int(value)
    if kind == "int":
        try:
            value = parse_integer(value)
        except ValueError:
            raise ConfigError(f"{path}: must be an integer (64000, 64_000 or 6.4e4), got "
                              f"{value!r}") from None
        if abs(value) > 2**62:
            raise ConfigError(f"{path}: too large, got {value!r}")
        _check_number(value, f, path)
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: must be a number, got {value!r}")
        _check_number(float(value), f, path)
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) or value not in f.metadata["choices"]:
            raise ConfigError(f"{path}: must be one of {'|'.join(f.metadata['choices'])}, "
                              f"got {value!r}")
        return value
    raise AssertionError(kind)


def _normalize(raw: Any, where: str) -> dict[str, Any]:
    """Check a parsed YAML document and convert it to canonical keys and SI values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a hwconfig must be a YAML mapping of sections, "
                          f"got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for sec, body in raw.items():
        if sec == "version":
            if isinstance(body, bool) or body != CONFIG_VERSION:
                raise ConfigError(f"{where}: version: only version {CONFIG_VERSION} is known, "
                                  f"got {body!r}")
            out["version"] = CONFIG_VERSION
        elif sec == "name":
            if not isinstance(body, str):
                raise ConfigError(f"{where}: name: must be a string, got {body!r}")
            out["name"] = body
        elif sec in SECTIONS:
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ConfigError(f"{where}: {sec}: must be a mapping of keys, got {body!r}")
            dest = out.setdefault(sec, {})
            spelled: dict[str, Any] = {}
            for key, value in body.items():
                attr, si = _resolve_key(sec, key, value, where)
                if attr in spelled:     # read_latency and read_latency_ns: one would win
                    raise ConfigError(f"{where}: {sec}.{key}: the same key as "
                                      f"{sec}.{spelled[attr]}; give it once")
                spelled[attr] = key
                dest[attr] = si
        else:
            raise ConfigError(f"{where}: {sec!s}: unknown section; expected version, name, "
                              + ", ".join(SECTIONS))
    return out


def _parse_override(text: str) -> tuple[str, str, Any]:
    where = f"--set {text}"
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"{where}: expected section.key=value, e.g. controller.interval=512")
    sec, name = parts
    if sec not in SECTIONS:
        raise ConfigError(f"{where}: {sec}: unknown section; expected one of "
                          + ", ".join(SECTIONS))
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value.strip()
    if parsed is None:
        raise ConfigError(f"{where}: {key}: missing value")
    return sec, name, parsed


def _build(merged: dict[str, Any], source: str, overrides: Iterable[str] = ()) -> HwConfig:
    sections = {}
    for sec, cls in SECTIONS.items():
        body = merged.get(sec, {})
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in body]
        if missing:
            raise ConfigError(f"{source}: {sec}.{missing[0]}: missing")
        sections[sec] = cls(**body)
    hw = HwConfig(version=merged.get("version", CONFIG_VERSION),
                  name=merged.get("name", Path(source).stem), source=source, **sections)
    sets = list(overrides)
    _cross_check(hw, source if not sets else f"{source} with --set {' --set '.join(sets)}")
    return hw


def _cross_check(hw: HwConfig, where: str) -> None:
    if hw.xbar.r_off_ohm <= hw.xbar.r_on_ohm:
        raise ConfigError(f"{where}: xbar.r_off: must exceed xbar.r_on "
                          f"({hw.xbar.r_off_ohm:g} <= {hw.xbar.r_on_ohm:g} ohm)")
    if hw.xbar.cells_per_weight not in (1, 2):
        raise ConfigError(f"{where}: xbar.cells_per_weight: must be 1 (offset column) or 2 "
                          f"(differential pair), got {hw.xbar.cells_per_weight}")
    if hw.dac.bits > hw.dac.input_bits:
        raise ConfigError(f"{where}: dac.bits: must not exceed dac.input_bits "
                          f"({hw.dac.bits} > {hw.dac.input_bits})")
    if hw.adc.cols_per_adc > hw.xbar.cols:
        raise ConfigError(f"{where}: adc.cols_per_adc: must not exceed xbar.cols "
                          f"({hw.adc.cols_per_adc} > {hw.xbar.cols})")
    if hw.xbar.rows > 1 << 20 or hw.xbar.cols > 1 << 20:
        raise ConfigError(f"{where}: xbar: crossbars above 2^20 rows or columns are not supported")


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such hwconfig file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read hwconfig: {exc}") from None
    try:
        return yamlio.load(text)
    except yamlio.DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    except (ValueError, RecursionError, OverflowError) as exc:   # e.g. a date 2001-13-45
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def bundled_hwconfig(name: str = "time-default") -> Path:
    """Path of a hwconfig shipped with the package (``time-default``, ``tiny``, ...)."""
    p = Path(str(resources.files("timesim") / "data" / "hwconfigs" / f"{name}.yaml"))
    if not p.is_file():
        raise ConfigError(f"{name}: no bundled hwconfig of that name")
    return p


def presets() -> list[str]:
    """Names of the hwconfigs shipped with the package (``--hw NAME`` loads one)."""
    folder = resources.files("timesim") / "data" / "hwconfigs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_about(name: str) -> str:
    """The first sentence of a bundled preset's header comment (what ``timesim hwconfigs`` and
    docs/hwconfig.md show), joined across its lines."""
    import re

    head = []
    for line in bundled_hwconfig(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        head.append(line.lstrip("#").strip())
    text = " ".join(head)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]


def resolve_hwconfig_path(path: str | Path) -> Path:
    """A file path as given, or a bundled preset by name (``neurosim-v2.1-rram``)."""
    p = Path(path)
    if p.exists() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    if str(path) in presets():
        return bundled_hwconfig(str(path))
    raise ConfigError(f"{path}: no such hwconfig file or preset; presets: "
                      + ", ".join(presets()))


def load_hwconfig(path: str | Path | None = None, overrides: Iterable[str] = ()) -> HwConfig:
    """Load a chip (the bundled default when ``path`` is None; a file, or a preset's name),
    then apply ``section.key=value`` overrides."""
    default_path = bundled_hwconfig()
    merged = _normalize(_read_yaml(default_path), str(default_path))
    source = str(default_path)
    if path is not None:
        path = resolve_hwconfig_path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, expected a hwconfig YAML file")
        raw = _read_yaml(path)
        if isinstance(raw, dict) and "version" not in raw:
            raise ConfigError(f"{path}: version: missing; add 'version: {CONFIG_VERSION}'")
        user = _normalize(raw, str(path))
        source = str(path)
        _overlay(merged, user)
        merged["name"] = user.get("name", path.stem)
    if isinstance(overrides, str):
        overrides = [overrides]
    origin = {}
    for text in overrides:
        sec, key, value = _parse_override(text)
        attr, si = _resolve_key(sec, key, value, f"--set {text}")
        merged[sec][attr] = si
        origin[(sec, attr)] = f"--set {text}"
    hw = _build(merged, source, overrides)
    from .plausible import warn_implausible

    warn_implausible(hw, origin)
    return hw


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> None:
    for sec, body in top.items():
        if isinstance(body, dict):
            base.setdefault(sec, {}).update(body)
        else:
            base[sec] = body


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(dotted key as written in YAML, kind, constraint, doc) for every key, for docs and tests."""
    rows = []
    for sec in SECTIONS:
        for name, f in _fields(sec).items():
            kind = f.metadata["kind"]
            key = split_suffix(name)[0] if kind in KINDS else name
            constraint = f.metadata["check"] or "|".join(f.metadata["choices"])
            rows.append((f"{sec}.{key}", kind, constraint, f.metadata["doc"]))
    return rows

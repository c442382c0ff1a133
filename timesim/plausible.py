"""Plausible ranges of a chip's main physical numbers: a value outside is warned about, never
refused (a study may mean it), because a wrong unit (``read_latency: 10 ms``) otherwise gives a
result that looks fine and is off by orders of magnitude.

Each range is wide (about a decade beyond what the cited sources report either way); a value of
exactly 0 means "not counted" and is not checked.
"""

from __future__ import annotations

import logging

from .units import format_quantity

log = logging.getLogger(__name__)

# (section, canonical attribute) -> (kind, low, high, what the range is); SI units
RANGES: dict[tuple[str, str], tuple[str, float, float, str]] = {
    # CMOS logic of RRAM accelerators runs at about 1 GHz: ISAAC (Shafiee et al., ISCA 2016)
    # 1.28 GHz, NeuroSim V2.1 Param.cpp clkFreq = 1e9, MNSIM 2.0 1 GHz
    ("clock", "frequency_hz"): ("frequency", 10e6, 5e9, "chip clocks"),
    # RRAM read pulses are nanoseconds to ~100 ns: NeuroSim V2.1 readPulseWidth = 10 ns, ISAAC
    # 100 ns per crossbar read; Wong et al., "Metal-Oxide RRAM", Proc. IEEE 100(6), 2012
    ("xbar", "read_latency_s"): ("time", 1e-9, 1e-6, "RRAM read pulses"),
    # V_read^2 x t / R over V_read 0.1-1 V, R 1 kOhm-1 MOhm, t 1-100 ns (Wong et al. 2012)
    ("xbar", "read_energy_j"): ("energy", 1e-17, 1e-10, "one RRAM cell read"),
    # LRS 1-100 kOhm, HRS 10 kOhm-10 MOhm (Wong et al. 2012; Yu, "Neuro-inspired computing
    # with emerging nonvolatile memory", Proc. IEEE 106(2), 2018), a decade of margin
    ("xbar", "r_on_ohm"): ("resistance", 100.0, 10e6, "RRAM low-resistance states"),
    ("xbar", "r_off_ohm"): ("resistance", 1e3, 1e9, "RRAM high-resistance states"),
    # read well below the switching voltage: 0.1-0.5 V (Wong et al. 2012; NeuroSim 0.5 V)
    ("xbar", "read_voltage_v"): ("voltage", 0.05, 1.5, "RRAM read voltages"),
    # SET/RESET at 0.5-3 V, forming higher (Wong et al. 2012; NeuroSim writeVoltage = 4 V)
    ("write", "voltage_v"): ("voltage", 0.3, 6.0, "RRAM programming voltages"),
    # switching in < 10 ns to microseconds (Wong et al. 2012; NeuroSim writePulseWidth = 50 ns)
    ("write", "pulse_latency_s"): ("time", 1e-9, 10e-6, "RRAM programming pulses"),
    # sub-pJ to ~100 pJ per switching event (Wong et al. 2012; Yu 2018)
    ("write", "pulse_energy_j"): ("energy", 1e-15, 1e-9, "one RRAM programming pulse"),
    # Murmann, "ADC Performance Survey 1997-2024": Nyquist ADCs from ~1 MS/s to ~20 GS/s;
    # Walden figure of merit ~1 fJ to ~1 pJ per step, 1-8 bits
    ("adc", "latency_s"): ("time", 50e-12, 1e-6, "ADC conversions"),
    ("adc", "energy_j"): ("energy", 1e-15, 1e-9, "ADC conversions"),
    # 1-bit wordline drivers to small current-steering DACs (ISAAC Table 2: 3 fJ)
    ("dac", "latency_s"): ("time", 50e-12, 1e-6, "DAC conversions"),
    ("dac", "energy_j"): ("energy", 1e-17, 1e-11, "DAC conversions"),
    # one logic stage or small SRAM access: tens of ps to a few ns at 22-65 nm (CACTI 7)
    ("ce", "compare_latency_s"): ("time", 10e-12, 100e-9, "comparator stages"),
    ("accumulation", "add_latency_s"): ("time", 10e-12, 100e-9, "adder stages"),
    ("buffer", "latency_s"): ("time", 10e-12, 100e-9, "SRAM buffer accesses"),
    ("interconnect", "hop_latency_s"): ("time", 10e-12, 100e-9, "router stages"),
    # Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm): 8-bit add 0.03 pJ to 32-bit
    # float multiply 3.7 pJ, a decade of margin either way
    ("ce", "compare_energy_j"): ("energy", 1e-16, 1e-10, "digital operations"),
    ("ce", "counter_energy_j"): ("energy", 1e-16, 1e-10, "digital operations"),
    ("accumulation", "add_energy_j"): ("energy", 1e-16, 1e-10, "digital operations"),
    ("gradient", "mac_energy_j"): ("energy", 1e-16, 1e-10, "digital operations"),
    ("activation", "energy_j"): ("energy", 1e-16, 1e-10, "digital operations"),
    ("pooling", "energy_j"): ("energy", 1e-16, 1e-10, "digital operations"),
    # Horowitz 2014: SRAM 1.25 pJ/byte (8 KB) to 12.5 pJ/byte (1 MB)
    ("buffer", "read_energy_j"): ("energy", 1e-15, 1e-10, "SRAM accesses per byte"),
    ("buffer", "write_energy_j"): ("energy", 1e-15, 1e-10, "SRAM accesses per byte"),
    ("global_buffer", "read_energy_j"): ("energy", 1e-15, 1e-10, "SRAM accesses per byte"),
    ("global_buffer", "write_energy_j"): ("energy", 1e-15, 1e-10, "SRAM accesses per byte"),
    # on-chip wires and routers: ISAAC Table 2 0.13 pJ/bit; NeuroSim H-tree ~pJ/bit
    ("interconnect", "energy_per_bit_j"): ("energy", 1e-15, 1e-10, "on-chip bits moved"),
    # HBM2 3.9 pJ/bit (NeuroSim V2.1 DRAM.cpp) to DDR ~20-40 pJ/bit (Horowitz 2014)
    ("dram", "energy_per_bit_j"): ("energy", 1e-13, 1e-10, "off-chip DRAM bits"),
}


def implausible(hw, origin: dict | None = None) -> list[str]:
    """One line per value of ``hw`` outside its plausible range (RANGES), naming where it came
    from: ``origin[(section, attribute)]`` (an override) or the hwconfig file."""
    lines = []
    for (sec, attr), (kind, lo, hi, what) in RANGES.items():
        x = getattr(getattr(hw, sec), attr)
        if x == 0 or lo <= x <= hi:
            continue
        key = f"{sec}.{attr.rsplit('_', 1)[0]}"
        where = (origin or {}).get((sec, attr), hw.source)
        lines.append(f"{where}: {key} = {format_quantity(x, kind)} is outside the usual "
                     f"range of {what}, {format_quantity(lo, kind)} to "
                     f"{format_quantity(hi, kind)} (a wrong unit?); simulating it as given")
    return lines


_warned: set[str] = set()


def warn_implausible(hw, origin: dict | None = None) -> list[str]:
    """Log ``implausible(hw, origin)`` as warnings (the CLI prints them), each line once per
    process (a sweep loads its chip once per point); return them."""
    lines = implausible(hw, origin)
    for line in lines:
        if line not in _warned:
            _warned.add(line)
            log.warning("%s", line)
    return lines

"""The NeuroSim preset against NeuroSim V2.1's own output on every reference network
(docs/validation.py; the references are docs/validation/neurosim-v2.1-*/).

The reference numbers are NeuroSim's, not timesim's, and the preset is the same for every
network (no number of it is a total of one of these runs divided by a count: docs/validation.md
says where each comes from). Targets are issue 23's: each phase within 1.25x in latency and
energy, the iteration within 1.15x, the chip area within 1.25x, every layer's forward and
weight-gradient latency within 1.5x, copies equal to NeuroSim's speed-ups on >= 80% of layers.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

import timesim

ROOT = Path(__file__).resolve().parent.parent


def _validation():
    spec = importlib.util.spec_from_file_location("ts_validation", ROOT / "docs" / "validation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ts_validation"] = mod
    spec.loader.exec_module(mod)
    return mod


V = _validation()
REFS = {r.name: r for r in V.available()}


@pytest.fixture(scope="module", params=sorted(REFS))
def cmp(request):
    ref = REFS[request.param]
    report, _ = V.run(ref)
    return V.compare(ref, report)


def test_the_references_are_there():
    assert {"vgg8", "heldout-a", "vgg8-conventional"} <= set(REFS)


# a gap a reference may show, explained in docs/validation.md; it must stay below this bound,
# and the test fails when it closes so that the page is updated
GAP_BOUND = 1.45


def _within(cmp: dict, what: str, r: float) -> None:
    known = what in REFS[cmp["reference"]].known_gaps
    if known:
        assert V.TARGET_PHASE < r <= GAP_BOUND, (cmp["reference"], what, r,
                                                 "explained gap moved: update docs/validation")
    else:
        assert r <= V.TARGET_PHASE, (cmp["reference"], what, r)


def test_every_phase_within_target(cmp):
    for p in cmp["phases"]:
        _within(cmp, f"{p['phase']} latency", V.ratio(p["ts_latency"], p["ns_latency"]))
        _within(cmp, f"{p['phase']} energy", V.ratio(p["ts_energy"], p["ns_energy"]))


def test_iteration_and_area_within_target(cmp):
    t = cmp["total"]
    assert V.ratio(t["ts_latency"], t["ns_latency"]) <= V.TARGET_TOTAL, cmp["reference"]
    assert V.ratio(t["ts_energy"], t["ns_energy"]) <= V.TARGET_TOTAL, cmp["reference"]
    assert V.ratio(cmp["area"]["ts"], cmp["area"]["ns"]) <= V.TARGET_AREA, cmp["reference"]


def test_every_layer_forward_and_gradient_within_target(cmp):
    for row in cmp["layers"]:
        for phase in ("FW", "WG"):
            r = V.ratio(row[f"ts_{phase}"], row[f"ns_{phase}"])
            assert r <= V.TARGET_LAYER, (cmp["reference"], row["layer"], phase, r)


def test_copies_are_neurosims_speed_ups(cmp):
    assert V.copies_matched(cmp) >= V.TARGET_COPIES, [(r["copies"], r["ns_copies"])
                                                      for r in cmp["layers"]]


def test_floorplan_is_neurosims_on_every_reference():
    """Tiles per layer as NeuroSim's console prints them (an independent count: its output)."""
    for ref in REFS.values():
        ns = V.neurosim(ref)
        report, _ = V.run(ref)
        tiles = [v["chip_tiles"] for v in report["mapping"]["by_layer"].values()]
        assert tiles == ns["tiles"], ref.name


def test_preset_numbers_are_consistent_with_their_documented_derivation():
    """A consistency check, not a validation: the per-action and per-unit numbers in the
    preset equal what ``docs/validation.py --derive`` computes from the VGG-8 reference's
    per-layer figures (the derivation is written down once, in the script)."""
    d = V.derive()
    hw = timesim.load_hwconfig(V.PRESET)
    ns, pj, um2 = 1e9, 1e12, 1e12
    preset = {
        "gradient.read_latency_ns": hw.gradient.read_latency_s * ns,
        "gradient.load_latency_ns": hw.gradient.load_latency_s * ns,
        "gradient.accumulate_latency_ns": hw.gradient.accumulate_latency_s * ns,
        "gradient.mac_energy_pJ": hw.gradient.mac_energy_j * pj,
        "gradient.accumulate_energy_pJ": hw.gradient.accumulate_energy_j * pj,
        "global_buffer.line_latency_ns": hw.global_buffer.line_latency_s * ns,
        "buffer.line_latency_ns": hw.buffer.line_latency_s * ns,
        "interconnect.wire_delay_ns_per_mm": hw.interconnect.wire_delay_ns_per_mm,
        "accumulation.bit_latency_ns": hw.accumulation.bit_latency_s * ns,
        "adc.energy_pJ": hw.adc.energy_j * pj,
        "xbar.array_read_energy_pJ": hw.xbar.array_read_energy_j * pj,
        "accumulation.bit_energy_pJ": hw.accumulation.bit_energy_j * pj,
        "global_buffer.read_energy_pJ": hw.global_buffer.read_energy_j * pj,
        "interconnect.chip_tree_energy_pJ": hw.interconnect.chip_tree_energy_j * pj,
        "interconnect.novel_tile_tree_energy_pJ": hw.interconnect.novel_tile_tree_energy_j * pj,
        "interconnect.conventional_tile_tree_energy_pJ":
            hw.interconnect.conventional_tile_tree_energy_j * pj,
        "interconnect.pe_bus_energy_pJ": hw.interconnect.pe_bus_energy_j * pj,
        "buffer.read_energy_pJ": hw.buffer.read_energy_j * pj,
        "buffer.register_clock_energy_pJ": hw.buffer.register_clock_energy_j * pj,
        "xbar.area_um2": hw.xbar.area_m2 * um2,
        "adc.area_um2": hw.adc.area_m2 * um2,
        "accumulation.area_um2": hw.accumulation.area_m2 * um2,
        "xbar.periphery_area_um2": hw.xbar.periphery_area_m2 * um2,
        "global_buffer.bit_area_um2": hw.global_buffer.bit_area_m2 * um2,
        "interconnect.wire_pitch_um": hw.interconnect.wire_pitch_um,
        "gradient.accumulator_bit_area_um2": hw.gradient.accumulator_bit_area_m2 * um2,
    }
    assert set(preset) == set(d)
    for key, value in preset.items():
        assert value == pytest.approx(d[key], rel=0.005), key

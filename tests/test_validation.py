"""The NeuroSim-matched preset against NeuroSim V2.1's own VGG-8 output (docs/validation.py).

The reference numbers are NeuroSim's (docs/validation/neurosim-v2.1-vgg8/), not timesim's; the
targets are issue 11's: each phase within 1.5x in latency and energy, the iteration within
1.25x, the chip area within 1.5x, every layer's forward and weight-gradient latency within 2x
except the layers docs/validation.md explains (NeuroSim's global accumulation on layer 7, its
weight-gradient array use on layer 1).
"""

import importlib.util
from pathlib import Path

import pytest

import timesim

ROOT = Path(__file__).resolve().parent.parent


def _validation():
    spec = importlib.util.spec_from_file_location("validation", ROOT / "docs" / "validation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


V = _validation()


@pytest.fixture(scope="module")
def cmp():
    report, _ = V.run()
    return V.compare(report)


def test_every_phase_within_target(cmp):
    for p in cmp["phases"]:
        assert V.ratio(p["ts_latency"], p["ns_latency"]) <= V.TARGET_PHASE, p
        assert V.ratio(p["ts_energy"], p["ns_energy"]) <= V.TARGET_PHASE, p


def test_iteration_and_area_within_target(cmp):
    t = cmp["total"]
    assert V.ratio(t["ts_latency"], t["ns_latency"]) <= V.TARGET_TOTAL
    assert V.ratio(t["ts_energy"], t["ns_energy"]) <= V.TARGET_TOTAL
    assert V.ratio(cmp["area"]["ts"], cmp["area"]["ns"]) <= V.TARGET_AREA


EXPLAINED = {("L7", "FW"), ("L1", "WG")}


def test_layers_within_target_or_explained(cmp):
    for row in cmp["layers"]:
        for phase in ("FW", "WG"):
            r = V.ratio(row[f"ts_{phase}"], row[f"ns_{phase}"])
            if (row["layer"], phase) in EXPLAINED:
                assert r > V.TARGET_LAYER, "explained gap closed: update docs/validation.md"
            else:
                assert r <= V.TARGET_LAYER, (row["layer"], phase, r)


def test_neurosim_copies_reproduced_where_the_tile_rule_agrees(cmp):
    # NeuroSim's speed-up per layer: 64, 16, 8, 4, 2, 1, 1, 8; the tile rule gives the same
    # for the six layers whose copies NeuroSim limits by its tile, not its PE geometry
    copies = [row["copies"] for row in cmp["layers"]]
    assert copies[1:7] == [16, 8, 4, 2, 1, 1]


def test_preset_numbers_are_the_documented_derivation():
    d = V.derive()
    hw = timesim.load_hwconfig(V.PRESET)
    pairs = [
        (hw.xbar.read_energy_j * 1e15, d["xbar.read_energy_fJ"]),
        (hw.adc.energy_j * 1e12, d["adc.energy_pJ"]),
        (hw.dac.energy_j * 1e15, d["dac.energy_fJ"]),
        (hw.accumulation.add_energy_j * 1e12, d["accumulation.add_energy_pJ"]),
        (hw.buffer.read_energy_j * 1e12, d["buffer.read_energy_pJ_per_byte"]),
        (hw.global_buffer.read_energy_j * 1e12, d["buffer.read_energy_pJ_per_byte"]),
        (hw.interconnect.energy_per_bit_j * 1e12, d["interconnect.energy_per_bit_pJ"]),
        (hw.interconnect.bits_per_cycle, d["interconnect.bits_per_cycle"]),
        (hw.global_buffer.bits_per_cycle, d["global_buffer.bits_per_cycle"]),
        (hw.gradient.macs_per_cycle, d["gradient.macs_per_cycle"]),
        (hw.gradient.mac_energy_j * 1e12, d["gradient.mac_energy_pJ"]),
        (hw.xbar.area_m2 * 1e12, d["xbar.area_um2"]),
        (hw.adc.area_m2 * 1e12, d["adc.area_um2"]),
        (hw.accumulation.area_m2 * 1e12, d["accumulation.area_um2"]),
        (hw.buffer.area_m2 * 1e6, d["buffer.area_mm2"]),
        (hw.interconnect.area_m2 * 1e6, d["interconnect.area_mm2"]),
    ]
    for have, want in pairs:
        assert have == pytest.approx(want, rel=0.02)


def test_neurosim_reference_is_read_as_published():
    ns = V.neurosim()
    # breakdown.csv totals, spot-checked against neurosim-output.txt's summary lines
    assert ns["total"]["latency_FW(s)"] == pytest.approx(0.151589)
    assert ns["total"]["energy_WG(J)"] == pytest.approx(0.340162)
    assert len(ns["layers"]) == 8 and ns["area"]["total"] == pytest.approx(9.5215e-05)

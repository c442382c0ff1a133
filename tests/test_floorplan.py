"""The network-sized floorplan (chip.floorplan: network) on a network computed by hand from
NeuroSim V2.1's rules (Chip.cpp ChipDesignInitialize / ChipFloorPlan, as docs/architecture.md
states them), and its errors."""

import pytest

import timesim
from timesim.errors import ConfigError
from timesim.floorplan import LayerIO, LayerShape, plan_network, size_units

HW = timesim.load_hwconfig("neurosim-v2.1-rram")

# a 3x3 conv 64 -> 128 on 16x16 (576 rows) and an FC 256 -> 10
SHAPES = [LayerShape("conv", 576, 128, kernel_area=9, in_channels=64),
          LayerShape("fc", 256, 10, kernel_area=1, in_channels=256)]


def test_tiles_copies_and_crossbars_by_hand():
    plan = plan_network(SHAPES, HW)
    # kernel areas 9 and 1 tie at one layer each: the first (9) gets the novel tiles; the
    # conv has >= 128 rows, so it is novel, the FC conventional
    assert [p.kind for p in plan.layers] == ["novel", "conventional"]
    # novel PE: the next power of two of 128 columns, at least 2 crossbars (256); conventional
    # tile: of 10 columns, at least 4 crossbars (512), its PE half of that
    assert (plan.novel_pes, plan.novel_pe_side) == (9, 256)
    assert (plan.conventional_tile_side, plan.conventional_pe_side) == (512, 256)
    assert [p.tiles for p in plan.layers] == [1, 1]
    # conv: 64 rows and 128 columns in a 2x2-crossbar PE -> 2 x 1 more copies each way = 4;
    # FC: 2x2 PEs of its tile each hold it (256 rows, 10 columns) -> 2 x 2, and in a PE its
    # 2 crossbar rows fill the PE's rows (1) while 10 columns fit twice (2) -> 8
    assert [p.copies for p in plan.layers] == [4, 8]
    assert plan.crossbars == 9 * 2 * 2 + 4 * 4
    assert plan.grid == (2, 1)


def test_chip_units_by_hand():
    plan = plan_network(SHAPES, HW)
    io = [LayerIO(input_volume=16 * 16 * 64, positions=14 * 14, in_channels=64),
          LayerIO(input_volume=256, positions=1, in_channels=256)]
    u = size_units(plan, io, HW, batch=32).units
    # largest input 16*16*64 values at 8 bits; overhead one 128x128 crossbar of ceil(log2 32)
    # = 5-bit values (81920 bits), 81920 // (16384 * 5 weight bits) = 1 array, doubled once
    assert u.input_bits == 131072
    assert (u.overhead_bits, u.write_parallel) == (163840, 2)
    # bus: novel layer 3 PEs x 256 columns + an ADC lane per 8 columns; conventional 512 + 64
    assert u.bus_bits == 768 + 96 + 512 + 64
    # gradient grid: 196 positions // 128 rows, 64 channels x 8 bits // 128 columns
    assert u.gradient_grid == (1, 4)


def test_write_parallel_auto_follows_the_batch():
    plan = plan_network(SHAPES, HW)
    io = [LayerIO(16384, 196, 64), LayerIO(256, 1, 256)]
    # batch 2: 1-bit values, overhead 16384 bits, 16384 // 81920 = 0 -> doubled 3 times = 0:
    # NeuroSim would divide by zero; timesim keeps at least one array
    assert size_units(plan, io, HW, batch=2).units.write_parallel == 1
    # batch 1024: 10-bit values: 2 arrays at first, overhead already >= the input share
    assert size_units(plan, io, HW, batch=1024).units.write_parallel == 2


def test_non_square_crossbars_are_refused_for_a_network_floorplan():
    hw = timesim.load_hwconfig("neurosim-v2.1-rram", ["xbar.cols=64"])
    with pytest.raises(ConfigError, match="square"):
        plan_network(SHAPES, hw)


def test_run_on_a_network_floorplan_reports_it(tmp_path):
    hw = timesim.load_hwconfig("neurosim-v2.1-rram")
    report = timesim.simulate(hw, timesim.open_trace(
        "synth:resnet20?iterations=2"), out=tmp_path / "r")
    fp = report["mapping"]["floorplan"]
    assert fp["mode"] == "network" and fp["tiles"] == sum(
        v["chip_tiles"] for v in report["mapping"]["by_layer"].values())
    assert report["area_mm2"]["units"]["crossbars"] == fp["crossbars"]

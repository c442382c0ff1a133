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


def _manifest(tmp_path, layers, batch=8):
    import yaml

    doc = {"format": "timesim-trace", "version": 1, "model": "m", "source": "test",
           "dataset": "none", "batch_size": batch, "iterations": 1, "chunk_iterations": 1,
           "dtype": "float32", "timing_only": True, "layers": layers}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "manifest.yaml").write_text(yaml.safe_dump(doc))
    return str(tmp_path / "t")


CONV = {"name": "conv", "kind": "conv2d", "rows": 576, "cols": 128, "kernel": [3, 3],
        "in_channels": 64, "out_channels": 128, "input_hw": [16, 16], "output_hw": [14, 14],
        "stride": [1, 1], "padding": [0, 0]}


def test_run_reports_the_floorplan_and_counts_its_area(tmp_path):
    trace = _manifest(tmp_path, [CONV, {"name": "fc", "kind": "linear", "rows": 256,
                                        "cols": 10}], batch=32)
    report = timesim.simulate(HW, timesim.open_trace(trace), out=tmp_path / "r")
    fp = report["mapping"]["floorplan"]
    # by hand (test_tiles_copies_and_crossbars_by_hand): a novel tile of 9 PEs of 2x2
    # crossbars and a conventional tile of 4x4 crossbars
    assert (fp["tiles"], fp["crossbars"]) == (2, 52)
    assert [v["copies"] for v in report["mapping"]["by_layer"].values()] == [4, 8]
    area = report["area_mm2"]["by_component"]
    assert area["crossbar"] == pytest.approx(52 * HW.xbar.area_m2 * 1e6)
    assert area["adc"] == pytest.approx(52 * 32 * HW.adc.area_m2 * 1e6)


def test_write_parallel_as_set_sizes_the_gradient_accumulator(tmp_path):
    trace = _manifest(tmp_path, [CONV], batch=32)
    reports = {}
    for wp in (2, 16):
        hw = timesim.load_hwconfig("neurosim-v2.1-rram", [f"write.parallel_arrays={wp}"])
        reports[wp] = timesim.simulate(hw, timesim.open_trace(trace))
        assert reports[wp]["mapping"]["floorplan"]["write_parallel_arrays"] == wp
    # accumulator: write_parallel crossbars of 128 x 128 adders of (gradient bits + 5) bits;
    # gradient bits auto: 4 + 8 + ceil(log2 1 grid row) = 12
    grow = (16 - 2) * 128 * 128 * (12 + 5) * HW.gradient.accumulator_bit_area_m2 * 1e6
    got = (reports[16]["area_mm2"]["by_component"]["gradient"]
           - reports[2]["area_mm2"]["by_component"]["gradient"])
    assert got == pytest.approx(grow)


def test_neurosim_copies_rule_programs_every_copy_on_a_fixed_floorplan(tmp_path):
    trace = _manifest(tmp_path, [CONV], batch=32)
    e = {}
    for rule in ("all", "neurosim"):
        hw = timesim.load_hwconfig("neurosim-v2.1-rram", ["chip.floorplan=fixed",
                                                          "mapping.duplicate=3",
                                                          f"write.copies={rule}"])
        e[rule] = timesim.simulate(hw, timesim.open_trace(trace))["energy_j"]["by_phase"]
    assert e["neurosim"]["write"] == pytest.approx(e["all"]["write"])


def test_pooling_read_off_a_flattening_linear_layer_but_not_a_token_layer():
    from timesim.mapping import pool_after
    from timesim.trace.format import LayerInfo

    conv = LayerInfo("c", "conv2d", 576, 128, kernel=(3, 3), input_hw=(16, 16),
                     output_hw=(8, 8))
    # 128 channels x 4 x 4 flattened: a 2x2 pool of the 8x8 map
    assert pool_after([conv, LayerInfo("fc", "linear", 2048, 10)], 0) == 4
    # 128 x 8 x 8: no pool
    assert pool_after([conv, LayerInfo("fc", "linear", 8192, 10)], 0) == 1
    # a patch embedding's 64 positions become 64 tokens of a per-token linear layer
    tok = LayerInfo("q", "linear", 128, 384, vectors_per_sample=64)
    assert pool_after([conv, tok], 0) == 1


def test_auto_global_buffer_needs_a_line_latency(tmp_path):
    trace = _manifest(tmp_path, [CONV])
    hw = timesim.load_hwconfig("neurosim-v2.1-rram", ["global_buffer.line_latency=0 ns"])
    with pytest.raises(ConfigError, match="line_latency"):
        timesim.simulate(hw, timesim.open_trace(trace))

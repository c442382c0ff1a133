"""The attention unit (DESIGN §10 ``attention.*``): an attention module's activation x
activation products, timed and charged to its out_proj, against hand counts."""

import csv
import math

import pytest

import timesim
from timesim.config import bundled_hwconfig

from .conftest import timing_manifest

B, S, E, T = 2, 10, 16, 3
MACS = 6 * B * S * S * E             # the recorder's count: 2·B·S²·E forward, twice that back
FW, BW = MACS // 3, 2 * MACS // 3    # 6400, 12800
LAYERS = [{"name": "enc.attn.in_proj", "kind": "linear", "rows": E, "cols": 3 * E,
           "vectors_per_sample": S},
          {"name": "enc.attn.out_proj", "kind": "linear", "rows": E, "cols": E,
           "vectors_per_sample": S},
          {"name": "head", "kind": "linear", "rows": E, "cols": 4}]
ENTRY = {"name": "enc.attn", "work": "attention scores and context (activation x activation, "
         "forward and backward)", "macs": MACS}


def _run(tmp_path, name, left_out=(), *sets):
    import yaml

    folder = timing_manifest(tmp_path / name, LAYERS, iterations=T, batch_size=B)
    if left_out:
        p = tmp_path / name / "manifest.yaml"
        doc = yaml.safe_load(p.read_text())
        doc["left_out"] = [dict(d) for d in left_out]
        p.write_text(yaml.safe_dump(doc))
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"),
                               ["attention.macs_per_cycle=300", "controller.wear_leveling=none",
                                *sets])
    return timesim.simulate(hw, folder, out=tmp_path / f"run-{name}")


def _actions(path):
    with open(path) as fh:
        return {(r["phase"], r["component"], r["action"]): int(r["count"])
                for r in csv.DictReader(fh)}


def test_attention_products_add_their_cycles_and_energy_to_the_out_proj(tmp_path):
    """Hand count at 300 MACs per cycle: forward ⌈6400 / 300⌉ = 22 cycles, backward
    ⌈12800 / 300⌉ = 43 per iteration, on the out_proj's phases only; energy MACS x T x 0.3 pJ;
    one attention unit's area (9.6153 mm2) only where it times something."""
    base = _run(tmp_path, "base")
    att = _run(tmp_path, "att", [ENTRY])
    fw, bw = math.ceil(FW / 300), math.ceil(BW / 300)
    assert (fw, bw) == (22, 43)
    by0, by1 = base["cycles"]["by_layer_phase"], att["cycles"]["by_layer_phase"]
    assert by1["enc.attn.out_proj"]["forward"] - by0["enc.attn.out_proj"]["forward"] == T * fw
    assert by1["enc.attn.out_proj"]["backward"] - by0["enc.attn.out_proj"]["backward"] == T * bw
    for name in ("enc.attn.in_proj", "head"):
        assert by1[name]["forward"] == by0[name]["forward"]
        assert by1[name].get("backward") == by0[name].get("backward")
    assert att["cycles"]["total"] - base["cycles"]["total"] == T * (fw + bw)
    # energy: the attention component is the MACs x mac_energy, nothing else moves
    e0, e1 = base["energy_j"], att["energy_j"]
    assert "attention" not in e0["by_component"]
    assert e1["by_component"]["attention"] == pytest.approx(MACS * T * 0.3e-12, rel=1e-12)
    assert e1["total"] - e0["total"] == pytest.approx(MACS * T * 0.3e-12, rel=1e-9)
    assert e1["by_phase"]["forward"] - e0["by_phase"]["forward"] == pytest.approx(
        FW * T * 0.3e-12, rel=1e-9)
    a0, a1 = _actions(tmp_path / "run-base" / "actions.csv"), \
        _actions(tmp_path / "run-att" / "actions.csv")
    assert a1.pop(("forward", "attention", "mac")) == FW * T
    assert a1.pop(("backward", "attention", "mac")) == BW * T
    assert a1 == a0
    # report: timed under digital, charged to the out_proj; nothing left out
    assert att["digital"] == [{**ENTRY, "layer": "enc.attn.out_proj"}]
    assert att["left_out"] == [] and base["digital"] == []
    assert att["mapping"]["by_layer"]["enc.attn.out_proj"]["attention_macs_per_iteration"] \
        == MACS
    ar0, ar1 = base["area_mm2"], att["area_mm2"]
    assert "attention" not in ar0["by_component"]
    assert ar1["by_component"]["attention"] == pytest.approx(9.6153)
    assert ar1["total"] - ar0["total"] == pytest.approx(9.6153)


def test_without_a_unit_or_a_mapped_out_proj_the_work_stays_left_out(tmp_path):
    """attention.units=0 (no unit), or a module whose out_proj is not a mapped layer: the
    entry stays in left_out and the chip's numbers are those without it."""
    base = _run(tmp_path, "base")
    none = _run(tmp_path, "none", [ENTRY], "attention.units=0")
    assert none["left_out"] == [ENTRY] and none["digital"] == []
    assert none["cycles"] == base["cycles"] and none["energy_j"] == base["energy_j"]
    assert none["area_mm2"] == base["area_mm2"]
    other = {**ENTRY, "name": "dec.cross_attn", "macs": 600}
    both = _run(tmp_path, "both", [ENTRY, other])
    assert both["left_out"] == [other]
    assert [d["name"] for d in both["digital"]] == ["enc.attn"]


def test_attention_units_are_shared_chip_wide():
    """Two layers whose 2 waves each take 100 cycles of attention products, nothing else.
    Layer by layer: [0, 200] then [200, 400] whatever the units. Pipelined (engine.pipeline
    layer): layer 1's first wave meets layer 0's second at 100; one unit serialises them
    ([100, 200], [200, 300], then layer 1's second wave [300, 400]), two run them together
    (layer 1's second wave [200, 300])."""
    from timesim.engine.costs import LayerTiming, Transfer, WaveCost
    from timesim.engine.iteration import LayerWork, simulate_iteration

    none = Transfer()
    waves = tuple(WaveCost(images=1, fw_in=none, fw_compute=0, fw_out=none, bw_in=none,
                           bw_compute=0, bw_out=none, wg_in=none, wg_compute=0,
                           wg_store=none, fw_digital=100) for _ in range(2))
    t = LayerTiming(waves=waves, mvm=1, mvm_t=1, select_row=0, select_drain=0,
                    topk_select=0, row_write=1, cell_write=1, row_read=1, write_jobs=1,
                    rows=1)
    layers = [LayerWork(timing=t, swaps=0)] * 2
    for units, pipeline, cycles in ((1, "none", 400), (2, "none", 400), (1, "layer", 400),
                                    (2, "layer", 300)):
        r = simulate_iteration(layers, pipeline=pipeline, attention_units=units)
        assert r.cycles == cycles, (units, pipeline)
        assert r.chip_busy[0] == cycles              # the forward phase's units busy


def test_two_modules_share_one_attention_unit(tmp_path):
    """engine.pipeline=layer with two attention modules' products in flight: one unit
    serialises them: a second unit shortens the iteration."""
    layers = [dict(LAYERS[0], name=f"{m}.in_proj") if i == 0 else
              dict(LAYERS[1], name=f"{m}.out_proj") for m in ("a", "b") for i in (0, 1)]
    folder = timing_manifest(tmp_path / "two", layers, iterations=1, batch_size=8)
    import yaml

    p = tmp_path / "two" / "manifest.yaml"
    doc = yaml.safe_load(p.read_text())
    doc["left_out"] = [{**ENTRY, "name": m, "macs": 3 * 10 ** 6} for m in ("a", "b")]
    p.write_text(yaml.safe_dump(doc))
    cycles = {}
    for units in (1, 2):
        hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), [
            "attention.macs_per_cycle=100", f"attention.units={units}",
            "engine.pipeline=layer", "controller.wear_leveling=none"])
        cycles[units] = timesim.simulate(hw, folder)["cycles"]["total"]
    assert cycles[2] < cycles[1]


def test_run_prints_what_is_timed_and_what_is_left_out(tmp_path, capsys):
    import yaml

    from timesim.cli import main

    folder = timing_manifest(tmp_path / "m", LAYERS, iterations=T, batch_size=B)
    p = tmp_path / "m" / "manifest.yaml"
    doc = yaml.safe_load(p.read_text())
    doc["left_out"] = [ENTRY, {**ENTRY, "name": "dec.cross_attn", "macs": 600}]
    p.write_text(yaml.safe_dump(doc))
    assert main(["run", "--trace", folder, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"attention  {MACS:.4g} digital MACs per iteration timed on the attention unit " \
           f"in 1 module" in out and "(enc.attn -> enc.attn.out_proj; report.json digital)" in out
    assert "not timed  600 digital MACs per iteration" in out and "dec.cross_attn" in out
    assert main(["run", "--trace", folder, "--out", str(tmp_path / "r0"),
                 "--set", "attention.units=0"]) == 0
    out = capsys.readouterr().out
    assert "timed on the attention unit" not in out
    assert f"not timed  {MACS + 600:.4g} digital MACs per iteration" in out
